"""Uploaded files: store the bytes, check a `fine-tune` file with tailor's own data checker
(the same line-numbered problems as `tailor data check`), and give OpenAI's FileObject.

The check needs no model: it parses and validates every line. Token-level problems (too long,
a chat template refusing a conversation) show when the job renders the data."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tailor.service.errors import invalid, not_found, quota_exceeded, too_large
from tailor.service.store import Store, new_id

PURPOSES = ("fine-tune", "fine-tune-results", "assistants", "batch", "user_data", "vision", "evals")
MIN_EXAMPLES = 10  # OpenAI's floor for a training file
_DETAILS = 5  # problems named in status_details


def public(body: dict) -> dict:
    """The FileObject a client sees (fields starting with _ are the service's own)."""
    return {k: v for k, v in body.items() if not k.startswith("_")}


def upload(store: Store, project: str, filename: str, purpose: str, tmp: Path, *, max_bytes: int,
           quota: Quota | None = None) -> dict:
    """Keep a streamed upload (`tmp`, a temporary file in the blob folder, already size-checked
    while it streamed) as a new file of `project`; the temporary file is gone either way."""
    try:
        if purpose not in PURPOSES:
            raise invalid(f"Invalid purpose '{purpose}'; use one of: {', '.join(PURPOSES)}.", "purpose")
        size = tmp.stat().st_size
        if size > max_bytes:
            raise too_large(f"The file is {size} bytes; this server accepts at most {max_bytes} "
                            "(raise it with tailor serve --max-upload-mb).")
        if purpose == "fine-tune" and not filename.lower().endswith(".jsonl"):
            raise invalid(f"Invalid file format for fine-tuning: '{filename}'. Upload a .jsonl file.", "file")
        body = _body(new_id("file-"), filename, purpose, size)
        if purpose == "fine-tune":
            body.update(check(tmp.read_bytes(), body["filename"]))
        with store.transaction():  # the quota check and the insert as one: two uploads cannot both squeeze in
            (quota or Quota()).check(store, project, size)
            store.adopt_blob(body["id"], tmp)
            return store.put("files", body, project=project)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class Quota:
    """A project's storage: how many files and how many bytes (0: no limit)."""

    max_files: int = 0
    max_bytes: int = 0

    def check(self, store: Store, project: str, adding: int) -> None:
        if self.max_files and store.count("files", project=project) >= self.max_files:
            raise quota_exceeded(f"This project already stores {self.max_files} files, the most this server allows; "
                                 "delete some (DELETE /v1/files/{id}) first.")
        used = store.total_bytes("files", project=project)
        if self.max_bytes and used + adding > self.max_bytes:
            raise quota_exceeded(f"This file would bring the project's storage to {used + adding} bytes; this server "
                                 f"allows {self.max_bytes}. Delete files you no longer need first.")


def _body(fid: str, filename: str, purpose: str, size: int) -> dict:
    return {"id": fid, "object": "file", "bytes": size, "created_at": int(time.time()),
            "filename": Path(filename).name, "purpose": purpose, "status": "processed",
            "status_details": None, "expires_at": None}


def store_bytes(store: Store, project: str, filename: str, purpose: str, data: bytes) -> dict:
    """Keep `data` as a new file (the service's own results); a `fine-tune` file is checked now."""
    body = _body(new_id("file-"), filename, purpose, len(data))
    store.write_blob(body["id"], data)
    if purpose == "fine-tune":
        body.update(check(data, body["filename"]))
    return store.put("files", body, project=project)


def check(data: bytes, filename: str) -> dict:
    """The data checker's verdict as FileObject fields (+ `_examples`, the valid example count, and
    `_kind`: chat, preference, text or prompt)."""
    from tailor.data import formats
    from tailor.data.problems import Problem, Problems

    problems = Problems(filename)
    # RFT prompts look like chat lines ending with a user turn: the first line decides
    fmt = "rft" if formats.peek_lines(data.splitlines()) == "prompt" else None
    parsed = formats.parse_bytes(data, Path(filename), problems, fmt)
    errors = problems.sorted()
    errors = [p for p in errors if p.severity == "error"]
    n = len(parsed.items)  # conversations, preference pairs or raw-text documents
    if not errors:
        return {"status": "processed", "_examples": n, "_kind": parsed.kind}
    shown = "; ".join(Problem.text(p) for p in errors[:_DETAILS])
    more = f" (and {len(errors) - _DETAILS} more)" if len(errors) > _DETAILS else ""
    return {"status": "error", "_examples": n, "_kind": parsed.kind,
            "status_details": f"{len(errors)} error(s) in {filename}: {shown}{more}"}


def get(store: Store, project: str, fid: str) -> dict:
    body = store.get("files", fid, project=project)
    if body is None:
        raise not_found("file", fid, "file_id")
    return body


def content(store: Store, project: str, fid: str) -> Path:
    path = store.blob_path("files", fid, project=project)
    if path is None:
        raise not_found("file", fid, "file_id")
    return path


def delete(store: Store, project: str, fid: str) -> dict:
    get(store, project, fid)
    store.delete("files", fid, project=project)
    store.delete_blob(fid)
    return {"id": fid, "object": "file", "deleted": True}


def listing(store: Store, project: str, *, after: str | None, limit: int, order: str, purpose: str | None) -> dict:
    if order not in ("asc", "desc"):
        raise invalid(f"Invalid order '{order}'; use asc or desc.", "order")
    if not 1 <= limit <= 10000:
        raise invalid(f"Invalid limit {limit}; use 1 to 10000.", "limit")
    rows, more = store.page("files", project=project, after=after, limit=limit, newest_first=order == "desc",
                            where={"purpose": purpose} if purpose else None)
    return page([public(r) for r in rows], more)


def page(data: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
