"""Where the fine-tuning service keeps its state: one SQLite database (WAL) plus a blob folder.

Every object (file, job, event, checkpoint) is a row with a few indexed columns and its
OpenAI-shaped body as JSON, so this small interface is all a server database would have to
replace. One lock serialises access to the one connection: SQLite allows one writer anyway,
and the service's writes are tiny. Uploaded bytes live in `blobs/` under their id only; an id
reaches the disk only after the database has said it exists, so no request string is a path.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import string
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

_ALPHABET = string.ascii_letters + string.digits
KINDS = ("files", "jobs", "events", "checkpoints", "evals", "eval_runs", "eval_items", "webhooks", "deliveries")

# Every kind is one table of the same shape: a few indexed columns and the OpenAI-shaped body as
# JSON. Kinds whose rows hang under a parent (events, checkpoints and deliveries under theirs,
# runs under their eval, output items under their run) are indexed by it.
_PARENTED = ("events", "checkpoints", "eval_runs", "eval_items", "deliveries")
_SCHEMA = "".join(
    [f"CREATE TABLE IF NOT EXISTS {kind} (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, "
     "project TEXT NOT NULL, parent TEXT, created_at INTEGER NOT NULL, body TEXT NOT NULL);\n" for kind in KINDS]
    + [f"CREATE INDEX IF NOT EXISTS {kind}_parent ON {kind} (parent, seq);\n" for kind in _PARENTED])


def new_id(prefix: str, n: int = 24) -> str:
    """A random id like OpenAI's: `file-` + 24 letters and digits."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(n))


def default_root() -> Path:
    from tailor.models import tailor_home

    return tailor_home() / "service"


class Store:
    """Rows of several kinds (files, jobs, events, checkpoints, evals, eval runs and their output
    items, webhook endpoints and their deliveries), each owned by a project; `parent` ties an event
    or checkpoint to its job, a run to its eval, an output item to its run, a delivery to its
    endpoint. Bodies are dicts; `put` inserts or replaces."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.blobs = self.root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.root / "service.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self):
        """Group writes: all of them land, or none (BEGIN IMMEDIATE takes the write lock up front)."""
        with self._lock:
            if self._db.in_transaction:  # nested: the outer transaction commits or rolls back
                yield self
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ---- rows ----------------------------------------------------------------------------

    def put(self, kind: str, body: dict, *, project: str, parent: str | None = None) -> dict:
        """Insert `body` (its `id` and `created_at` are the row's), or replace the row with that id."""
        assert kind in KINDS
        with self._lock:
            self._db.execute(
                f"INSERT INTO {kind} (id, project, parent, created_at, body) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET body = excluded.body",
                (body["id"], project, parent, int(body.get("created_at") or time.time()), json.dumps(body)))
        return body

    def get(self, kind: str, id_: str, *, project: str | None = None) -> dict | None:
        """The body, or None when there is no such id (for that project, when one is given)."""
        assert kind in KINDS
        sql, args = f"SELECT body FROM {kind} WHERE id = ?", [id_]
        if project is not None:
            sql, args = sql + " AND project = ?", args + [project]
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return json.loads(row[0]) if row else None

    def update(self, kind: str, id_: str, **fields) -> dict | None:
        """Merge `fields` into a body in one transaction; returns the new body."""
        with self.transaction():
            body = self.get(kind, id_)
            if body is None:
                return None
            body.update(fields)
            self._db.execute(f"UPDATE {kind} SET body = ? WHERE id = ?", (json.dumps(body), id_))
        return body

    def transition(self, kind: str, id_: str, from_: tuple[str, ...], **fields) -> dict | None:
        """Compare-and-set: merge `fields` only if the row's status is one of `from_`, in one
        transaction; None when it is not (a cancel or pause got there first)."""
        with self.transaction():
            body = self.get(kind, id_)
            if body is None or body.get("status") not in from_:
                return None
            body.update(fields)
            self._db.execute(f"UPDATE {kind} SET body = ? WHERE id = ?", (json.dumps(body), id_))
        return body

    def count(self, kind: str, *, project: str, statuses: tuple[str, ...] | None = None) -> int:
        sql, args = f"SELECT COUNT(*) FROM {kind} WHERE project = ?", [project]
        if statuses:
            sql += f" AND json_extract(body, '$.status') IN ({', '.join('?' * len(statuses))})"
            args += list(statuses)
        with self._lock:
            return self._db.execute(sql, args).fetchone()[0]

    def total_bytes(self, kind: str, *, project: str) -> int:
        with self._lock:
            row = self._db.execute(f"SELECT COALESCE(SUM(json_extract(body, '$.bytes')), 0) FROM {kind} "
                                   "WHERE project = ?", (project,)).fetchone()
        return int(row[0])

    def delete(self, kind: str, id_: str, *, project: str | None = None) -> bool:
        sql, args = f"DELETE FROM {kind} WHERE id = ?", [id_]
        if project is not None:
            sql, args = sql + " AND project = ?", args + [project]
        with self._lock:
            return self._db.execute(sql, args).rowcount > 0

    def page(self, kind: str, *, project: str | None = None, parent: str | None = None, after: str | None = None,
             limit: int = 20, newest_first: bool = True, where: dict | None = None) -> tuple[list[dict], bool]:
        """One page in insertion order (or reverse), starting after the row `after`; returns
        (bodies, has_more). An `after` that is not in this listing gives an empty page, which is
        what stops older SDKs' paging loops. `where` matches top-level body fields."""
        sql, args = f"SELECT seq, body FROM {kind} WHERE 1 = 1", []
        for col, value in (("project", project), ("parent", parent)):
            if value is not None:
                sql, args = sql + f" AND {col} = ?", args + [value]
        for key, value in (where or {}).items():  # key: a dotted path into the body
            path = "$" + "".join('."' + part.replace('"', '') + '"' for part in key.split("."))
            sql, args = sql + " AND json_extract(body, ?) = ?", args + [path, value]
        if after is not None:
            with self._lock:
                row = self._db.execute(sql.replace("seq, body", "seq") + " AND id = ?", args + [after]).fetchone()
            if row is None:
                return [], False
            sql, args = sql + (" AND seq < ?" if newest_first else " AND seq > ?"), args + [row[0]]
        sql += f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, args + [limit + 1]).fetchall()
        return [json.loads(b) for _, b in rows[:limit]], len(rows) > limit

    def all(self, kind: str, **filters) -> list[dict]:
        """Every matching row, oldest first."""
        return self.page(kind, limit=1 << 30, newest_first=False, **filters)[0]

    def count_by(self, kind: str, key: str) -> dict:
        """How many rows have each value of the top-level body field `key` (e.g. jobs per status)."""
        assert kind in KINDS
        with self._lock:
            rows = self._db.execute(f"SELECT json_extract(body, ?), COUNT(*) FROM {kind} GROUP BY 1",
                                    ("$." + key,)).fetchall()
        return dict(rows)

    def last_seq(self, kind: str) -> int:
        """The newest row's sequence number (0 when there is none): where `since` starts."""
        assert kind in KINDS
        with self._lock:
            return self._db.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {kind}").fetchone()[0]

    def since(self, kind: str, seq: int, limit: int = 100_000) -> tuple[list[dict], int]:
        """Bodies of the rows added after sequence number `seq`, oldest first, and the last one's
        number: for watchers that read only what is new."""
        assert kind in KINDS
        with self._lock:
            rows = self._db.execute(f"SELECT seq, body FROM {kind} WHERE seq > ? ORDER BY seq LIMIT ?",
                                    (seq, limit)).fetchall()
        return [json.loads(b) for _, b in rows], rows[-1][0] if rows else seq

    def project_of(self, kind: str, id_: str) -> str | None:
        with self._lock:
            row = self._db.execute(f"SELECT project FROM {kind} WHERE id = ?", (id_,)).fetchone()
        return row[0] if row else None

    # ---- blobs ---------------------------------------------------------------------------

    def write_blob(self, id_: str, data: bytes) -> Path:
        """Store bytes under an id this module made (write to a temporary name, then rename,
        so a crash never leaves half a blob under a real id)."""
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=self.blobs)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return self.adopt_blob(id_, Path(tmp))

    def temp_blob(self):
        """An open, unnamed-to-clients file in the blob folder for a streamed upload; give its
        path to `adopt_blob` once complete (or unlink it)."""
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=self.blobs)
        return os.fdopen(fd, "wb"), Path(tmp)

    def adopt_blob(self, id_: str, tmp: Path) -> Path:
        """Make a finished temporary file the blob of `id_` (fsync, then an atomic rename)."""
        assert id_.replace("-", "").isalnum(), id_
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        target = self.blobs / id_
        os.replace(tmp, target)
        return target

    def blob_path(self, kind: str, id_: str, *, project: str | None = None) -> Path | None:
        """The blob of a row that exists; None for any other id, whatever characters it holds."""
        if self.get(kind, id_, project=project) is None:
            return None
        path = self.blobs / id_
        return path if path.is_file() else None

    def delete_blob(self, id_: str) -> None:
        try:
            (self.blobs / id_).unlink()
        except FileNotFoundError:
            pass
