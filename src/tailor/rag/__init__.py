"""Retrieval: a document index (`tailor index`), the prompt format retrieved chunks go into, and
RAFT-style training data (`tailor data rag`). See the README section "RAG and fine-tuning"."""

from tailor.rag.context import STYLES, add_context, sources
from tailor.rag.index import Hit, Index, IndexReport, build_index

__all__ = ["STYLES", "Hit", "Index", "IndexReport", "add_context", "build_index", "sources"]
