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
import logging
import re
from pathlib import Path

from tailor.errors import UsageError

log = logging.getLogger(__name__)
DEFAULT_PROJECT = "default"
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # a name goes into model ids: ft:{base}:{name}:...
_FINGERPRINT_SALT = b"tailor-project-fingerprint:"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def fingerprint(key: str) -> str:
    """The project name of a key given without one: stable across restarts, not the key."""
    return "key-" + hashlib.sha256(_FINGERPRINT_SALT + key.encode()).hexdigest()[:12]


MIN_KEY_CHARS = 16  # shorter keys are guessable; they work, with a warning
_TOKEN_FIELD = "hub_token="  # a keys-file line's third field: the project's own Hugging Face token


class Keyring:
    """key -> project, held as digests. Empty: no key is required and everyone is `default`.
    `hub_tokens`: project -> its own Hugging Face token, for jobs that push (keys file only)."""

    def __init__(self, keys: dict[str, str] | None = None, hub_tokens: dict[str, str] | None = None):
        for k in keys or {}:
            if not k.strip():
                raise UsageError("An API key is empty or only whitespace: every request would need no real key. "
                                 "Give a real key (at least 16 random characters).")
        self._digests = [(_digest(k), name) for k, name in (keys or {}).items()]
        self.hub_tokens = dict(hub_tokens or {})

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
    when neither flag is given). Values are `KEY` or `KEY NAME`; a file's lines may add a third
    field `hub_token=hf_...`, the project's own token for jobs that push to the Hub. An empty or
    whitespace key refuses to start; a key shorter than 16 characters warns."""
    entries: list[tuple[str, str | None, str, str | None]] = []  # (key, name, where, hub token)
    for i, value in enumerate(cli_keys or []):
        entries.append(_entry(value, f"--api-key #{i + 1}", tokens=False))
    if keys_file:
        entries += _read_file(keys_file)
    if not entries and env_key is not None:
        if not env_key.strip():
            raise UsageError("$TAILOR_API_KEY is set but empty or only whitespace, which would let every request in "
                             "without a key. Set it to a real key (at least 16 random characters), or unset it.")
        entries.append((env_key.strip(), None, "$TAILOR_API_KEY", None))
    keys: dict[str, str] = {}
    tokens: dict[str, str] = {}
    for key, name, where, token in entries:
        if key in keys:
            raise UsageError(f"{where}: this key is given twice; give each key once (one key is one project).")
        if len(key) < MIN_KEY_CHARS:
            log.warning("%s: this key is %d characters; keys shorter than %d are guessable (use e.g. "
                        "`openssl rand -hex 24`)", where, len(key), MIN_KEY_CHARS)
        if len(entries) == 1 and name is None:
            name = DEFAULT_PROJECT  # one key: everything belongs to `default`, as without keys
        keys[key] = name or fingerprint(key)
        if token:
            tokens[keys[key]] = token
    return Keyring(keys, tokens)


def _entry(text: str, where: str, *, tokens: bool) -> tuple[str, str | None, str, str | None]:
    parts = text.split()
    token = None
    if tokens and len(parts) == 3 and parts[2].startswith(_TOKEN_FIELD):
        token = parts.pop()[len(_TOKEN_FIELD):]
    if not parts or len(parts) > 2:
        more = " (a keys file's line may add `hub_token=hf_...`)" if tokens else ""
        raise UsageError(f"{where}: expected `KEY` or `KEY NAME` (a key and a project name, space-separated){more}.")
    name = parts[1] if len(parts) == 2 else None
    if name is not None and not _NAME.match(name):
        raise UsageError(f"{where}: project name '{name}' is not valid; use 1 to 64 letters, digits, '.', '_' "
                         "or '-' (it becomes part of model ids like ft:BASE:NAME:...).")
    if token is not None and (name is None or not token):
        raise UsageError(f"{where}: a hub_token needs a named project (`KEY NAME hub_token=hf_...`).")
    return parts[0], name, where, token


def _read_file(path: str) -> list[tuple[str, str | None, str, str | None]]:
    try:
        text = Path(path).expanduser().read_text()
    except OSError as exc:
        raise UsageError(f"--api-keys {path}: cannot read it ({exc.strerror}). Give a file of `KEY NAME` lines.") \
            from exc
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(_entry(line, f"{path} line {n}", tokens=True))
    if not out:
        raise UsageError(f"--api-keys {path}: no keys in it. Write one `KEY NAME` line per project.")
    return out


def project(request) -> str:
    """The project of a request's API key, which the server's Guard put in the request's state
    (`default` when the server has no keys)."""
    return getattr(request.state, "project", None) or DEFAULT_PROJECT
