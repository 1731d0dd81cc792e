"""Uploaded files: store the bytes, check a `fine-tune` file with tailor's own data checker
(the same line-numbered problems as `tailor data check`), and give OpenAI's FileObject.

The check needs no model: it parses and validates every line. Token-level problems (too long,
a chat template refusing a conversation) show when the job renders the data."""

from __future__ import annotations

import time
from pathlib import Path

from tailor.service.errors import invalid, not_found, too_large
from tailor.service.store import Store, new_id

PURPOSES = ("fine-tune", "fine-tune-results", "assistants", "batch", "user_data", "vision")
MIN_EXAMPLES = 10  # OpenAI's floor for a training file
_DETAILS = 5  # problems named in status_details


def public(body: dict) -> dict:
    """The FileObject a client sees (fields starting with _ are the service's own)."""
    return {k: v for k, v in body.items() if not k.startswith("_")}


def upload(store: Store, project: str, filename: str, purpose: str, data: bytes, *, max_bytes: int) -> dict:
    if purpose not in PURPOSES:
        raise invalid(f"Invalid purpose '{purpose}'; use one of: {', '.join(PURPOSES)}.", "purpose")
    if len(data) > max_bytes:
        raise too_large(f"The file is {len(data)} bytes; this server accepts at most {max_bytes} "
                        "(raise it with tailor serve --max-upload-mb).")
    if purpose == "fine-tune" and not filename.lower().endswith(".jsonl"):
        raise invalid(f"Invalid file format for fine-tuning: '{filename}'. Upload a .jsonl file.", "file")
    return store_bytes(store, project, filename, purpose, data)


def store_bytes(store: Store, project: str, filename: str, purpose: str, data: bytes) -> dict:
    """Keep `data` as a new file; a `fine-tune` file is checked now, so its status is final."""
    fid = new_id("file-")
    store.write_blob(fid, data)
    body = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
            "filename": Path(filename).name, "purpose": purpose, "status": "processed",
            "status_details": None, "expires_at": None}
    if purpose == "fine-tune":
        body.update(check(data, body["filename"]))
    return store.put("files", body, project=project)


def check(data: bytes, filename: str) -> dict:
    """The data checker's verdict as FileObject fields (+ `_examples`, the valid example count, and
    `_kind`: chat, preference or text)."""
    from tailor.data import formats
    from tailor.data.problems import Problem, Problems

    problems = Problems(filename)
    parsed = formats.parse_bytes(data, Path(filename), problems)
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
