"""A document index: `build_index` (create or update) and `Index` (open, search).

An index is a folder holding one SQLite file, `index.db` (see store.py). A document is named by the
argument that brought it in: a file given by name by its file name (`notes.txt`), a file found in a
folder by the folder's name and its path inside it (`docs/setup/guide.md`). Names never depend on the
working directory or hold a home directory, because they reach prompts, training data and API
responses; re-running with the same arguments finds the same names, so only changes are re-embedded.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tailor.errors import TailorError
from tailor.rag.chunking import SUPPORTED, check_settings, chunk_sections, read_sections
from tailor.rag.embed import DEFAULT, Embedder, canonical_ref
from tailor.rag.store import FORMAT, ChunkRecord, SQLiteStore

DB_NAME = "index.db"
DEFAULTS = {"embed_model": DEFAULT, "chunk_tokens": 200, "overlap": 40}


@dataclass(frozen=True)
class Hit:
    text: str          # the chunk text (its heading path on the first line when it has one)
    source: str        # the document's name: "notes.txt", or "docs/setup/guide.md" for a folder given
    heading: str       # the nearest heading path ("Intro > Setup"), "" if none
    score: float       # cosine similarity in [-1, 1], higher is better (0.0 from chunks())
    chunk_id: str      # stable id "SOURCE#N"


def _hit(record: ChunkRecord, score: float = 0.0) -> Hit:
    return Hit(record.text, record.source, record.heading, float(score), f"{record.source}#{record.n}")


@dataclass
class IndexReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    chunks: int = 0            # chunks in the index after the build
    embedded: int = 0          # chunks embedded by this run
    store: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.added)} added, {len(self.updated)} updated, {len(self.removed)} removed, "
                f"{len(self.unchanged)} unchanged; {self.chunks} chunks ({self.embedded} embedded) "
                f"in {self.seconds:.1f}s [{self.store}]")


class Index:
    """An opened index. Search embeds the query with the model the index was built with."""

    def __init__(self, path: Path, store: SQLiteStore, meta: dict):
        self.path = path
        self.store = store
        self.meta = {**meta, "store": store.kind}
        self._embedder: Embedder | None = None

    @classmethod
    def open(cls, path: str | Path) -> "Index":
        path = Path(path)
        if path.name == DB_NAME and path.is_file():
            path = path.parent
        db = path / DB_NAME
        if not db.is_file():
            raise TailorError(f"{path}: no index here (no {DB_NAME}); build one with "
                              f"`tailor index DOCS... --out {path}`.")
        store = SQLiteStore(db, dims=0)
        try:
            meta = store.get_meta()
        except Exception as exc:  # sqlite3.DatabaseError: some other file named index.db
            store.close()
            raise TailorError(f"{db}: not a tailor index ({exc}).") from exc
        if meta.get("format") != FORMAT:
            store.close()
            raise TailorError(f"{path}: not a complete tailor index (a build may have been interrupted); "
                              f"run `tailor index DOCS... --out {path}` again.")
        store.dims = int(meta["dims"])
        return cls(path, store, meta)

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder.load(self.meta["embed_model"])
        return self._embedder

    def search(self, query: str, k: int = 4, source: str | None = None) -> list[Hit]:
        """The k chunks most similar to `query`, best first (only `source`'s chunks when given)."""
        return self.search_vector(self.embedder.encode([query])[0], k, source)

    def search_vector(self, vector: np.ndarray, k: int = 4, source: str | None = None) -> list[Hit]:
        """`search` for an already embedded query (batch the encoding when there are many)."""
        return [_hit(r, s) for r, s in self.store.search(vector, k, source)]

    def chunks(self, source: str | None = None) -> list[Hit]:
        """All chunks (of one source), in source then document order; score 0.0."""
        return [_hit(r) for r in self.store.chunks(source)]

    def sources(self) -> list[str]:
        return sorted(self.store.file_hashes())

    def __len__(self) -> int:
        return self.store.count()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_index(docs: list[str | Path], out: str | Path, *, embed_model: str | None = None,
                chunk_tokens: int | None = None, overlap: int | None = None, progress: bool = True,
                store: str = "auto") -> IndexReport:
    """Create or update the index at `out` so it holds exactly `docs` (files, or folders walked for
    supported files). Unchanged files (same content hash, same settings) are kept as they are;
    files no longer given are removed. All writes are one SQLite transaction: a build that fails
    or is killed leaves the previous index (or, for a new one, no complete index) behind.
    Settings left as None keep the existing index's, else the defaults."""
    started = time.perf_counter()
    out = Path(out)
    files = collect_files(docs)
    out.mkdir(parents=True, exist_ok=True)
    old = _existing(out / DB_NAME)
    settings = _settings(old.get("meta", {}), embed_model, chunk_tokens, overlap)
    check_settings(settings["chunk_tokens"], settings["overlap"])
    report = IndexReport()
    redo_all = bool(old.get("meta")) and any(old["meta"].get(k) != v for k, v in settings.items())
    if redo_all:
        report.notes.append("settings changed since the last build: every file is chunked and embedded again")
    changed = _plan(files, old.get("hashes", {}), redo_all, report)
    chunked, vectors, dims = [], [], old.get("dims")
    if changed or dims is None:  # loading the model takes seconds: only when something is embedded
        embedder = Embedder.load(settings["embed_model"])
        if settings["chunk_tokens"] > embedder.max_tokens - 2:  # [CLS] and [SEP] take two
            raise TailorError(f"--chunk-tokens {settings['chunk_tokens']} is over what the embedding model "
                              f"reads ({embedder.max_tokens - 2} tokens); longer chunks would be cut silently.")
        chunked = _chunk_all(changed, embedder, settings, report)
        vectors, dims = _embed(chunked, embedder, progress), embedder.dims
    db = SQLiteStore(out / DB_NAME, dims, prefer=store)
    try:
        with db.batch():
            for source in report.removed:
                db.remove_file(source)
            for (source, _, sha), records, vecs in zip(changed, chunked, vectors, strict=True):
                db.put_file(source, sha, records, vecs)
            db.set_meta({**settings, "dims": dims, "format": FORMAT})
        report.chunks, report.store = db.count(), db.kind
        if db.why_not_vec and store == "auto":
            report.notes.append(f"vector search uses numpy, not sqlite-vec: {db.why_not_vec}")
    finally:
        db.close()
    report.embedded = sum(len(r) for r in chunked)
    report.seconds = time.perf_counter() - started
    return report


def collect_files(docs) -> dict[str, Path]:
    """source name -> file, for files and folders (walked, hidden entries skipped). One error for
    every missing, unsupported or doubly named path at once."""
    files: dict[str, Path] = {}
    problems = []

    def add(name: str, path: Path) -> None:
        if name in files and files[name].resolve() != path.resolve():
            problems.append(f"{path}: named {name!r} like {files[name]}; give their folder instead")
        files[name] = path

    for doc in docs:
        path = Path(doc)
        if path.is_dir():
            found = [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in SUPPORTED
                     and not any(part.startswith(".") for part in p.relative_to(path).parts)]
            if not found:
                problems.append(f"{doc}: folder holds no {', '.join(SUPPORTED)} files")
            for p in found:
                add((Path(path.resolve().name) / p.relative_to(path)).as_posix(), p)
        elif not path.exists():
            problems.append(f"{doc}: no such file or folder")
        elif path.suffix.lower() not in SUPPORTED:
            problems.append(f"{doc}: unsupported file type {path.suffix or '(none)'} "
                            f"(tailor index reads {', '.join(SUPPORTED)})")
        else:
            add(path.name, path)
    if problems:
        raise TailorError("cannot index:\n  " + "\n  ".join(problems))
    return files


def _existing(db: Path) -> dict:
    if not db.is_file():
        return {}
    store = SQLiteStore(db, dims=0, prefer="numpy")
    try:
        meta = store.get_meta()
        if meta.get("format") != FORMAT:
            return {}
        return {"meta": {k: meta.get(k) for k in DEFAULTS}, "dims": meta.get("dims"), "hashes": store.file_hashes()}
    except Exception as exc:  # sqlite3.DatabaseError
        raise TailorError(f"{db}: exists but is not a tailor index ({exc}); choose another --out.") from exc
    finally:
        store.close()


def _settings(old: dict, embed_model, chunk_tokens, overlap) -> dict:
    given = {"embed_model": canonical_ref(embed_model) if embed_model is not None else None,
             "chunk_tokens": chunk_tokens, "overlap": overlap}
    return {k: v if v is not None else old.get(k, DEFAULTS[k]) for k, v in given.items()}


def _plan(files: dict[str, Path], hashes: dict[str, str], redo_all: bool, report: IndexReport):
    """Fill the report's lists; return (source, path, sha256) for every file to (re)index."""
    changed = []
    for source, path in sorted(files.items()):
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        if source not in hashes:
            report.added.append(source)
        elif hashes[source] != sha or redo_all:
            report.updated.append(source)
        else:
            report.unchanged.append(source)
            continue
        changed.append((source, path, sha))
    report.removed = sorted(set(hashes) - set(files))
    return changed


def _chunk_all(changed, embedder: Embedder, settings: dict, report: IndexReport) -> list[list[ChunkRecord]]:
    out, problems = [], []
    for source, path, _ in changed:
        try:
            chunks = chunk_sections(read_sections(path), embedder.tokenizer,
                                    settings["chunk_tokens"], settings["overlap"])
        except TailorError as exc:
            problems.append(str(exc))
            continue
        if not chunks:
            report.notes.append(f"{source}: no text found (a scanned PDF or an empty file?)")
        out.append([ChunkRecord(source, n, c.heading, c.text) for n, c in enumerate(chunks)])
    if problems:
        raise TailorError("cannot index:\n  " + "\n  ".join(problems))
    return out


def _embed(chunked: list[list[ChunkRecord]], embedder: Embedder, progress: bool) -> list[np.ndarray]:
    from tqdm import tqdm

    texts = [r.text for records in chunked for r in records]
    batch = 64
    parts = []
    with tqdm(total=len(texts), unit="chunk", desc="embedding", file=sys.stderr, disable=not progress or not texts,
              dynamic_ncols=True) as bar:
        for start in range(0, len(texts), batch):
            parts.append(embedder.encode(texts[start:start + batch]))
            bar.update(len(parts[-1]))
    flat = np.concatenate(parts) if parts else np.zeros((0, embedder.dims), dtype=np.float32)
    bounds = np.cumsum([0] + [len(r) for r in chunked])
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
