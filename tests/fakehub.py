"""A fake Hugging Face Hub on loopback, for testing uploads with the real `huggingface_hub` client.

It implements the endpoints that `HfApi.whoami`, `create_repo`, `create_branch` and
`upload_folder` call (see docs/research.md section 3): whoami-v2, repos/create, branch,
validate-yaml, tree (for delete_patterns), preupload, the git-LFS batch API with a basic PUT
transfer, and commit (NDJSON: file, lfsFile, deletedFile).
Xet is not implemented: run the client with Xet disabled (`HF_HUB_DISABLE_XET=1`, or
`use_fake_hub`), or answer every file as a regular blob (`lfs=False`), which the Xet pipeline
also commits without Xet storage.

Use it as a context manager; `hub.endpoint` is the URL to put in HF_ENDPOINT. After a push,
`hub.files(repo_id)` is what the repo holds and `hub.commits(repo_id)` every commit made.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

# What the real Hub accepts as a model id in a card's `base_model` (a local path is rejected).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: list[dict] = field(default_factory=list)


class FakeHub:
    def __init__(self, *, token: str = "hf_fake_token_0123456789", user: str = "tester", lfs: bool = True):
        self.token, self.user, self.lfs = token, user, lfs
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) in arrival order
        self.auth_headers: list[str] = []  # every Authorization header seen
        self.fail_commit: str | None = None  # set to make every commit fail with this message (400)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        self._serving = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._serving.start()
        return self

    def __exit__(self, *exc) -> None:
        if getattr(self, "_serving", None) is not None:  # shutdown() waits for serve_forever forever
            self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo_id].branches[branch])

    def commits(self, repo_id: str) -> list[dict]:
        return list(self.repos[repo_id].commits)


def use_fake_hub(monkeypatch, hub: FakeHub, tmp_path, *, token: str | None = None) -> None:
    """Point an in-process `huggingface_hub` at `hub`: its constants are read at import time, so
    the module attributes are patched, not the environment. No login cache; HF_TOKEN = token."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", token)


def hub_env(hub: FakeHub, home, *, token: str | None = None) -> dict[str, str]:
    """Environment variables for a subprocess that talks to `hub` (set before huggingface_hub loads)."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_XET="1", HF_HOME=str(home), HF_HUB_OFFLINE="0")
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def front_matter(readme: bytes | str) -> dict:
    """The YAML front matter of a model card, parsed."""
    import yaml

    text = readme.decode() if isinstance(readme, bytes) else readme
    m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert m, "the card starts with a --- YAML block ---"
    return yaml.safe_load(m.group(1))


# ---------------------------------------------------------------------------------------------
# The HTTP side


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            self._dispatch("GET")

        def do_POST(self):
            self._dispatch("POST")

        def do_PUT(self):
            self._dispatch("PUT")

        def _dispatch(self, method: str) -> None:
            path = urlparse(self.path).path
            body = self._body()
            with hub._lock:
                hub.requests.append((method, path))
                hub.auth_headers.append(self.headers.get("Authorization", ""))
                status, payload, headers = _route(hub, method, path, body, self._authorized())
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            return self.headers.get("Authorization", "") == f"Bearer {hub.token}"

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # streamed LFS PUTs
                out = b""
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    chunk = self.rfile.read(size)
                    self.rfile.readline()
                    if size == 0:
                        return out
                    out += chunk
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    return Handler


def _error(status: int, message: str, code: str | None = None):
    return status, {"error": message}, ({"X-Error-Code": code} if code else {})


def _route(hub: FakeHub, method: str, path: str, body: bytes, authed: bool):
    if path == "/api/whoami-v2":
        if not authed:
            return _error(401, "Invalid credentials in Authorization header")
        return 200, {"type": "user", "name": hub.user, "auth": {"accessToken": {"role": "write"}}}, {}
    if path == "/api/validate-yaml":
        return _validate_yaml(json.loads(body)["content"])
    m = re.match(r"^/(.+?/.+?)\.git/info/lfs/objects/batch$", path)
    if m and method == "POST":
        return _lfs_batch(hub, json.loads(body), authed)
    m = re.match(r"^/lfs-upload/([0-9a-f]{64})$", path)
    if m and method == "PUT":
        if hashlib.sha256(body).hexdigest() != m.group(1):
            return _error(400, "sha256 mismatch")
        hub.lfs_objects[m.group(1)] = body
        return 200, {}, {}
    if not authed:
        return _error(401, "Invalid username or password.")
    if path == "/api/repos/create" and method == "POST":
        return _create_repo(hub, json.loads(body))
    m = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)$", path)
    if m and method == "GET":
        return _tree(hub, m.group(1), unquote(m.group(2)))
    m = re.match(r"^/api/models/([^/]+/[^/]+)/(preupload|commit|branch)/(.+)$", path)
    if m and method == "POST":
        repo_id, action, rev = m.group(1), m.group(2), unquote(m.group(3))
        repo = hub.repos.get(repo_id)
        if repo is None:
            return _error(404, "Repository not found", "RepoNotFound")
        if action == "branch":
            if rev in repo.branches:
                return _error(409, "Branch already exists")
            repo.branches[rev] = dict(repo.branches["main"])
            return 200, {}, {}
        if rev not in repo.branches:
            return _error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        if action == "preupload":
            return _preupload(hub, json.loads(body))
        if hub.fail_commit:
            return _error(400, hub.fail_commit)
        return _commit(hub, repo_id, repo, rev, body)
    return _error(404, f"fake hub: no route for {method} {path}")


def _validate_yaml(content: str):
    import yaml

    m = re.match(r"^---\n(.*?)\n---\n", content, re.S)
    if not m:
        return 200, {"warnings": [{"message": "empty or missing yaml metadata in repo card"}]}, {}
    meta = yaml.safe_load(m.group(1)) or {}
    errors = []
    bases = meta.get("base_model", [])
    for base in [bases] if isinstance(bases, str) else bases:
        if not HUB_ID.match(str(base)):
            errors.append({"message": f'"base_model" with value "{base}" is not a valid model id'})
    for ds in meta.get("datasets", []) or []:
        if not HUB_ID.match(str(ds)):
            errors.append({"message": f'"datasets" with value "{ds}" is not a valid dataset id'})
    if errors:
        return 400, {"errors": errors}, {}
    return 200, {}, {}


def _create_repo(hub: FakeHub, payload: dict):
    repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
    url = f"{hub.endpoint}/{repo_id}"
    if repo_id in hub.repos:
        return 409, {"error": "You already created this model repo", "url": url}, {}
    hub.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
    return 200, {"url": url, "name": repo_id}, {}


def _preupload(hub: FakeHub, payload: dict):
    files = []
    for f in payload["files"]:
        # Like the Hub's default .gitattributes: weights and images go to LFS, text stays in git.
        lfs = hub.lfs and f["size"] > 0 and f["path"].endswith((".safetensors", ".bin", ".png", ".gguf"))
        files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
    return 200, {"files": files}, {}


def _lfs_batch(hub: FakeHub, payload: dict, authed: bool):
    if not authed:
        return _error(401, "Unauthorized")
    objects = [{"oid": o["oid"], "size": o["size"],
                "actions": {"upload": {"href": f"{hub.endpoint}/lfs-upload/{o['oid']}"}}}
               for o in payload["objects"]]
    return 200, {"transfer": "basic", "objects": objects}, {}


def _tree(hub: FakeHub, repo_id: str, branch: str):
    repo = hub.repos.get(repo_id)
    if repo is None or branch not in repo.branches:
        return _error(404, "Repository or revision not found", "RepoNotFound")
    return 200, [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                 for p, b in sorted(repo.branches[branch].items())], {}


def _commit(hub: FakeHub, repo_id: str, repo: Repo, branch: str, body: bytes):
    lines = [json.loads(ln) for ln in body.decode().splitlines() if ln.strip()]
    if not lines or lines[0]["key"] != "header":
        return _error(400, "the first NDJSON line must be the header")
    header, files, deleted = lines[0]["value"], {}, []
    for item in lines[1:]:
        value = item["value"]
        if item["key"] == "file":
            files[value["path"]] = base64.b64decode(value["content"])
        elif item["key"] == "lfsFile":
            if value["oid"] not in hub.lfs_objects:
                return _error(400, f"LFS object {value['oid']} was never uploaded")
            files[value["path"]] = hub.lfs_objects[value["oid"]]
        elif item["key"] == "deletedFile":
            deleted.append(value["path"])
        else:
            return _error(400, f"fake hub: unsupported commit operation {item['key']}")
    for path in deleted:
        repo.branches[branch].pop(path, None)
    repo.branches[branch].update(files)
    oid = hashlib.sha1(f"{repo_id}|{branch}|{len(repo.commits)}".encode()).hexdigest()
    repo.commits.append({"oid": oid, "branch": branch, "summary": header["summary"],
                         "description": header.get("description", ""), "files": files, "deleted": deleted})
    return 200, {"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid}, {}
