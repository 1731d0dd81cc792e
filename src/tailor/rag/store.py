"""Where an index keeps its chunks and vectors: the small `VectorStore` interface and its embedded
default, one SQLite file (`INDEX/index.db`).

Why sqlite-vec: the whole index is one file that can be copied or mailed; there is no server to run;
chunks, per-file content hashes and settings sit beside the vectors in plain SQL tables, so an
incremental update (delete one file's chunks, insert its new ones) is a few statements inside one
transaction, which is also what makes a crashed build harmless. Its KNN is a brute-force scan, which
is exact and fast enough for the thousands to low millions of chunks a fine-tuning project indexes.
LanceDB is the embedded alternative when an approximate (IVF/HNSW) index is needed; a team serving
many users would switch to Qdrant or pgvector by implementing `VectorStore` (see the README).

Every vector is also kept as a float32 BLOB in the `chunks` table, the portable source of truth. The
sqlite-vec `vec0` table is only the search structure. That is what makes the pure-numpy fallback
possible: some Python builds have no loadable SQLite extensions (`enable_load_extension` missing,
sqlite-vec issue #83; pyenv builds often, this project's machines among them). There `pysqlite3`
(PyPI `pysqlite3-binary`, the same DB-API with its own SQLite that loads extensions; a dependency on
Linux x86_64) is used instead, and only where neither works is the same file searched with a numpy
dot product.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from tailor.errors import TailorError

FORMAT = "tailor-index-1"


@dataclass(frozen=True)
class ChunkRecord:
    source: str
    n: int           # position of the chunk within its source, from 0
    heading: str
    text: str


class VectorStore(Protocol):
    """What an index needs from a store. Writes happen inside `batch()`: all of them or none."""

    kind: str

    def batch(self): ...                                       # context manager: one transaction
    def get_meta(self) -> dict: ...
    def set_meta(self, meta: dict) -> None: ...
    def file_hashes(self) -> dict[str, str]: ...               # source -> sha256 of its bytes
    def put_file(self, source: str, sha256: str, chunks: list[ChunkRecord], vectors: np.ndarray) -> None: ...
    def remove_file(self, source: str) -> None: ...
    def search(self, vector: np.ndarray, k: int, source: str | None = None) -> list[tuple[ChunkRecord, float]]: ...
    def chunks(self, source: str | None = None) -> list[ChunkRecord]: ...
    def count(self) -> int: ...
    def close(self) -> None: ...


def _driver():
    """The sqlite3 module to use: the standard one if it can load extensions, else pysqlite3 when
    installed, else the standard one (and the numpy search)."""
    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3
    try:
        from pysqlite3 import dbapi2
    except ImportError:
        return sqlite3
    return dbapi2


def connect(path: str | Path):
    return _driver().connect(str(path), isolation_level=None)  # transactions are explicit


def sqlite_vec_problem(db) -> str | None:
    """Load sqlite-vec into `db`; None on success, else why not (in words)."""
    if not hasattr(db, "enable_load_extension"):
        return "this Python's sqlite3 cannot load extensions (sqlite-vec issue #83)"
    try:
        import sqlite_vec

        db.enable_load_extension(True)
        sqlite_vec.load(db)
        db.enable_load_extension(False)
    except (ImportError, AttributeError, sqlite3.Error, _driver().Error) as exc:
        return f"sqlite-vec did not load: {exc}"
    return None


class SQLiteStore:
    """The embedded store. `prefer`: 'auto' (sqlite-vec if it loads, else numpy), 'numpy'."""

    def __init__(self, path: str | Path, dims: int, *, prefer: str = "auto"):
        self.path = Path(path)
        self.dims = dims
        self.db = connect(self.path)
        self.why_not_vec = sqlite_vec_problem(self.db) if prefer == "auto" else "numpy store asked for"
        self.kind = "sqlite-vec" if self.why_not_vec is None else "numpy"
        self._matrix: tuple[np.ndarray, np.ndarray] | None = None  # numpy search cache: (ids, vectors)

    # -- writing -----------------------------------------------------------------------------------
    @contextmanager
    def batch(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self._create_tables()
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        finally:
            self._matrix = None

    def _create_tables(self) -> None:
        # One statement at a time: executescript() would COMMIT the open transaction first.
        for statement in (
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS files (source TEXT PRIMARY KEY, sha256 TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY, source TEXT NOT NULL, n INTEGER NOT NULL, "
            "heading TEXT NOT NULL, text TEXT NOT NULL, embedding BLOB NOT NULL)",
            "CREATE INDEX IF NOT EXISTS chunks_source ON chunks (source, n)",
        ):
            self.db.execute(statement)
        has_vec = self._has_vec_table()
        if self.kind == "sqlite-vec" and not has_vec:
            self.db.execute(f"CREATE VIRTUAL TABLE vec_chunks USING vec0("
                            f"embedding float[{self.dims}] distance_metric=cosine)")
            # An index built earlier by the numpy fallback: give it its search table now.
            self.db.execute("INSERT INTO vec_chunks (rowid, embedding) SELECT id, embedding FROM chunks")
        elif self.kind == "numpy" and has_vec:
            raise TailorError(f"{self.path.parent} was built with sqlite-vec, which this Python cannot load "
                              f"({self.why_not_vec}); it can be searched but not updated here. Update it with "
                              f"a Python whose sqlite3 loads extensions, or build a new index with another --out.")

    def _has_vec_table(self) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'vec_chunks'").fetchone() is not None

    def set_meta(self, meta: dict) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                            [(k, json.dumps(v)) for k, v in meta.items()])

    def put_file(self, source: str, sha256: str, chunks: list[ChunkRecord], vectors: np.ndarray) -> None:
        self.remove_file(source)
        self.db.execute("INSERT INTO files (source, sha256) VALUES (?, ?)", (source, sha256))
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        for chunk, vector in zip(chunks, vectors, strict=True):
            blob = vector.tobytes()
            cur = self.db.execute("INSERT INTO chunks (source, n, heading, text, embedding) VALUES (?, ?, ?, ?, ?)",
                                  (source, chunk.n, chunk.heading, chunk.text, blob))
            if self.kind == "sqlite-vec":
                self.db.execute("INSERT INTO vec_chunks (rowid, embedding) VALUES (?, ?)", (cur.lastrowid, blob))

    def remove_file(self, source: str) -> None:
        if self.kind == "sqlite-vec":
            self.db.execute("DELETE FROM vec_chunks WHERE rowid IN (SELECT id FROM chunks WHERE source = ?)",
                            (source,))
        self.db.execute("DELETE FROM chunks WHERE source = ?", (source,))
        self.db.execute("DELETE FROM files WHERE source = ?", (source,))

    # -- reading -----------------------------------------------------------------------------------
    def get_meta(self) -> dict:
        if not self._table_exists("meta"):
            return {}
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    def _table_exists(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                               (name,)).fetchone() is not None

    def file_hashes(self) -> dict[str, str]:
        if not self._table_exists("files"):
            return {}
        return dict(self.db.execute("SELECT source, sha256 FROM files"))

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] if self._table_exists("chunks") else 0

    def chunks(self, source: str | None = None) -> list[ChunkRecord]:
        where, params = ("WHERE source = ?", (source,)) if source is not None else ("", ())
        rows = self.db.execute(f"SELECT source, n, heading, text FROM chunks {where} ORDER BY source, n", params)
        return [ChunkRecord(*row) for row in rows]

    def search(self, vector: np.ndarray, k: int, source: str | None = None) -> list[tuple[ChunkRecord, float]]:
        vector = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        if k < 1:
            return []
        if self.kind == "sqlite-vec" and source is None and self._has_vec_table():
            rows = self.db.execute("SELECT rowid, distance FROM vec_chunks WHERE embedding MATCH ? AND k = ? "
                                   "ORDER BY distance", (vector.tobytes(), k)).fetchall()
            scored = [(rowid, 1.0 - float(distance)) for rowid, distance in rows]
        else:
            scored = self._numpy_search(vector, k, source)
        return [(self._record(rowid), score) for rowid, score in scored]

    def _numpy_search(self, vector: np.ndarray, k: int, source: str | None) -> list[tuple[int, float]]:
        if source is not None:  # one document's chunks: few, read them directly
            rows = self.db.execute("SELECT id, embedding FROM chunks WHERE source = ?", (source,)).fetchall()
            ids, matrix = _unpack(rows, self.dims)
        else:
            if self._matrix is None:
                self._matrix = _unpack(self.db.execute("SELECT id, embedding FROM chunks").fetchall(), self.dims)
            ids, matrix = self._matrix
        scores = matrix @ vector
        # Ties broken by id, so equal scores come back in a stable order on every run.
        order = np.lexsort((ids, -scores))[:k]
        return [(int(ids[i]), float(scores[i])) for i in order]

    def _record(self, rowid: int) -> ChunkRecord:
        row = self.db.execute("SELECT source, n, heading, text FROM chunks WHERE id = ?", (rowid,)).fetchone()
        return ChunkRecord(*row)

    def close(self) -> None:
        self.db.close()


def _unpack(rows, dims: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dims)
    return ids, matrix
