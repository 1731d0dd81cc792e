"""Rendered datasets on disk, keyed by content hash, so a second run starts without re-tokenising.

A store is a folder of flat arrays: every example's token ids end to end (int32), a parallel
trained-mask (bool), and an index (start, length, trained tokens, line) per example. Examples
are views into the flat arrays, so the token ids exist once, memory-mapped. The folder is
written under a temporary name and renamed, so an interrupted run never leaves a store that
looks complete. Stores hold every example at full length; max_length is applied when reading,
so one store serves any --max-length.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

CACHE_VERSION = 1
INDEX_FIELDS = ("start", "length", "trained", "line")


def cache_root() -> Path:
    from tailor.models import tailor_home

    return tailor_home() / "datasets"


def tokenizer_fingerprint(tokenizer) -> str:
    """Changes when anything that affects rendering changes: vocabulary, merges, added tokens,
    normaliser, template and special tokens."""
    h = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    h.update(json.dumps([str(tokenizer.chat_template), tokenizer.special_tokens_map], sort_keys=True,
                        default=str).encode())
    return h.hexdigest()


def _code_fingerprint() -> bytes:
    """The source of the modules that decide what a store holds: a change to them is a new key."""
    h = hashlib.sha256()
    for name in ("formats.py", "convert.py", "preference.py", "render.py", "ingest.py", "dataset.py", "problems.py",
                 "templates.py"):
        h.update((Path(__file__).parent / name).read_bytes())
    return h.digest()


def dataset_key(path: Path, tokenizer) -> str:
    h = hashlib.sha256(f"tailor-dataset-v{CACHE_VERSION}|".encode())
    h.update(_code_fingerprint())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(tokenizer_fingerprint(tokenizer).encode())
    return h.hexdigest()[:24]


class StoreWriter:
    """Appends rendered examples to a temporary folder; `finish` renames it into place."""

    def __init__(self, target: Path):
        self.target = target
        target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        self._ids = open(self.tmp / "tokens.bin", "wb")
        self._mask = open(self.tmp / "mask.bin", "wb")
        self.index: list[tuple[int, int, int, int]] = []
        self.total = 0

    def add(self, ids: np.ndarray, mask: np.ndarray, line: int) -> None:
        self._ids.write(np.ascontiguousarray(ids, dtype=np.int32).tobytes())
        self._mask.write(np.ascontiguousarray(mask, dtype=bool).tobytes())
        self.index.append((self.total, len(ids), int(mask.sum()), line))
        self.total += len(ids)

    def finish(self, meta: dict, target: Path | None = None) -> Path:
        """Close the files and rename the folder to `target` (default: the store's place)."""
        self.target = target or self.target
        self._ids.close()
        self._mask.close()
        np.save(self.tmp / "index.npy", np.asarray(self.index, dtype=np.int64).reshape(-1, 4))
        (self.tmp / "meta.json").write_text(json.dumps({**meta, "version": CACHE_VERSION, "tokens": self.total}))
        if self.target.exists():  # another run built the same store; ours is identical
            shutil.rmtree(self.target, ignore_errors=True)
        try:
            os.rename(self.tmp, self.target)
        except OSError:
            if not (self.target / "meta.json").is_file():
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)
        return self.target

    def abort(self) -> None:
        self._ids.close()
        self._mask.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Store:
    """A finished store, read back: flat `ids`, `mask`, per-example `index`, and `meta`."""

    def __init__(self, folder: Path, in_memory: bool = False):
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        self.index = np.load(folder / "index.npy")
        n = self.meta["tokens"]
        if in_memory:
            self.ids = np.fromfile(folder / "tokens.bin", dtype=np.int32, count=n)
            self.mask = np.fromfile(folder / "mask.bin", dtype=bool, count=n)
        elif n:
            self.ids = np.memmap(folder / "tokens.bin", dtype=np.int32, mode="r", shape=(n,))
            self.mask = np.memmap(folder / "mask.bin", dtype=bool, mode="r", shape=(n,))
        else:
            self.ids, self.mask = np.zeros(0, np.int32), np.zeros(0, bool)

    @staticmethod
    def exists(folder: Path) -> bool:
        try:
            return json.loads((folder / "meta.json").read_text()).get("version") == CACHE_VERSION
        except (OSError, ValueError):
            return False
