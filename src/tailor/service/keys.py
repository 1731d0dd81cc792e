"""API keys and the projects they stand for.

Each key is a project: it sees only its own files, jobs and fine-tuned models. One key (or
none) is the project `default`. Several keys come from `--api-key` (repeated) or a keys file of
`KEY NAME` lines; a key given without a name is named by a fingerprint of it (`key-` + 12 hex
digits of a salted SHA-256), so the plain key is never stored: rows keep the project name only.

The keyring holds SHA-256 digests, never the keys: every request's token is hashed and
compared with every digest by hmac.compare_digest, with no early exit, so neither the timing
nor the length of the token tells which key (if any) it came close to.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

from tailor.errors import UsageError

DEFAULT_PROJECT = "default"
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # a name goes into model ids: ft:{base}:{name}:...
_FINGERPRINT_SALT = b"tailor-project-fingerprint:"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def fingerprint(key: str) -> str:
    """The project name of a key given without one: stable across restarts, not the key."""
    return "key-" + hashlib.sha256(_FINGERPRINT_SALT + key.encode()).hexdigest()[:12]


class Keyring:
    """key -> project, held as digests. Empty: no key is required and everyone is `default`."""

    def __init__(self, keys: dict[str, str] | None = None):
        self._digests = [(_digest(k), name) for k, name in (keys or {}).items()]

    def __bool__(self) -> bool:
        return bool(self._digests)

    @property
    def projects(self) -> list[str]:
        return sorted({name for _, name in self._digests})

    def project(self, token: str) -> str | None:
        """The project of `token`, or None. Compares against every key, whatever matches."""
        given, found = _digest(token), None
        for digest, name in self._digests:
            if hmac.compare_digest(given, digest) and found is None:
                found = name
        return found


def load(cli_keys: list[str] | None, keys_file: str | None, env_key: str | None) -> Keyring:
    """The keyring from `--api-key` values, a `--api-keys FILE`, and $TAILOR_API_KEY (used only
    when neither flag is given). Lines and values are `KEY` or `KEY NAME`."""
    entries: list[tuple[str, str | None, str]] = []  # (key, name, where)
    for i, value in enumerate(cli_keys or []):
        entries.append(_entry(value, f"--api-key #{i + 1}"))
    if keys_file:
        entries += _read_file(keys_file)
    if not entries and env_key:
        entries.append((env_key.strip(), None, "$TAILOR_API_KEY"))
    keys: dict[str, str] = {}
    for key, name, where in entries:
        if key in keys:
            raise UsageError(f"{where}: this key is given twice; give each key once (one key is one project).")
        if len(entries) == 1 and name is None:
            name = DEFAULT_PROJECT  # one key: everything belongs to `default`, as without keys
        keys[key] = name or fingerprint(key)
    return Keyring(keys)


def _entry(text: str, where: str) -> tuple[str, str | None, str]:
    parts = text.split()
    if not parts or len(parts) > 2:
        raise UsageError(f"{where}: expected `KEY` or `KEY NAME` (a key and a project name, space-separated).")
    name = parts[1] if len(parts) == 2 else None
    if name is not None and not _NAME.match(name):
        raise UsageError(f"{where}: project name '{name}' is not valid; use 1 to 64 letters, digits, '.', '_' "
                         "or '-' (it becomes part of model ids like ft:BASE:NAME:...).")
    return parts[0], name, where


def _read_file(path: str) -> list[tuple[str, str | None, str]]:
    try:
        text = Path(path).expanduser().read_text()
    except OSError as exc:
        raise UsageError(f"--api-keys {path}: cannot read it ({exc.strerror}). Give a file of `KEY NAME` lines.") \
            from exc
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(_entry(line, f"{path} line {n}"))
    if not out:
        raise UsageError(f"--api-keys {path}: no keys in it. Write one `KEY NAME` line per project.")
    return out


def project(request) -> str:
    """The project of a request's API key, which the server's Guard put in the request's state
    (`default` when the server has no keys)."""
    return getattr(request.state, "project", None) or DEFAULT_PROJECT
