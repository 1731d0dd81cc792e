"""Retrieval for a conversation: the top-k chunks of an index for the latest user turn, put into
the messages the model sees with rag.context. `tailor chat` and the server both go through here,
so a model is served the same context, in the same format, that its RAFT data taught it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tailor.errors import UsageError
from tailor.rag.context import STYLES, add_context

MAX_K = 32  # more chunks than this would not fit a small model's context anyway
# Every index is opened, searched and closed on this one thread. An SQLite connection may only be
# used by the thread that made it, and a fast tokenizer raises "Already borrowed" when two threads
# encode at once; the server asks from many worker threads. A query embeds in milliseconds.
_SEARCHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tailor-retrieval")


def _on_searcher(fn, *args):
    return _SEARCHER.submit(fn, *args).result()


@dataclass
class Retriever:
    path: Path
    index: object  # tailor.rag.index.Index
    k: int = 4
    style: str = "system"
    chunks: int = 0  # counted at open: the index may only be read on the search thread

    @classmethod
    def open(cls, path: str | Path, *, k: int = 4, style: str = "system") -> Retriever:
        """Open the index and load its embedder now, so a missing index or model fails at start-up
        and the first question is not the slow one."""
        from tailor.rag.index import Index

        check_k(k, "k")  # commands check their own flag first, to name it
        if style not in STYLES:
            raise UsageError(f"The context style {style!r} is not one of {', '.join(STYLES)}.")
        index = _on_searcher(Index.open, path)
        retriever = cls(Path(path), index, k, style, _on_searcher(len, index))
        retriever.search("warm-up", 1)
        return retriever

    @property
    def name(self) -> str:
        """The index's folder name: what clients may see (never its path)."""
        return self.path.resolve().name

    def search(self, query: str, k: int | None = None) -> list:
        k = self.k if k is None else k
        if k == 0:
            return []
        return _on_searcher(self.index.search, query, k)

    def augment(self, messages: list[dict], k: int | None = None) -> tuple[list[dict], list | None]:
        """(messages with the chunks for the latest user turn in them, the hits). The hits are None
        when retrieval did not run: k is 0 or there is no user text to search for."""
        query = latest_user_text(messages)
        if query is None or (self.k if k is None else k) == 0:
            return messages, None
        hits = self.search(query, k)
        return add_context(messages, hits, self.style), hits

    def close(self) -> None:
        _on_searcher(self.index.close)


def latest_user_text(messages: list[dict]) -> str | None:
    """The text of the last user message (text parts joined), or None if it has none."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content if isinstance(content, str) and content.strip() else None
    return None


def check_k(k, name: str) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_K:
        raise UsageError(f"{name} is {k!r}; give a whole number of chunks from 0 to {MAX_K}.")
    return k


def format_sources(hits: list) -> str:
    """`a.md#2 (0.71), b.md#0 (0.55)`: what `tailor chat` shows after an answer."""
    return ", ".join(f"{h.chunk_id} ({h.score:.2f})" for h in hits) or "none found"

