"""The dataset entry points: a JSONL file -> validated examples -> rendered, cached examples.

`prepare` is what training calls; `analyse` is what `tailor data check` calls (it never raises
for a bad file: it returns the problems). Both share one pipeline: read and validate, render in
batches into a store (cached by content hash), then apply max_length when reading.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tailor.data import formats
from tailor.data.cache import Store, StoreWriter, cache_root, dataset_key
from tailor.data.examples import Example, ExampleView, Pair, select, select_pairs, text_rows, trained_tokens
from tailor.data.ingest import render_into
from tailor.data.problems import Problem, Problems
from tailor.data.templates import ensure_chat_template, stop_token_ids
from tailor.errors import TailorError

__all__ = ["Analysis", "DataError", "Example", "ExampleView", "Pair", "Prepared", "analyse", "conversations",
           "prepare", "select"]


class DataError(TailorError):
    """The dataset has errors; str() is the full line-numbered report (as `tailor data check`)."""


@dataclass
class Prepared:
    examples: Sequence
    """What training steps over: Examples (chat, and raw-text rows), or Pairs (preference)."""
    lengths: np.ndarray
    """Token count per example (after truncation; a pair's two sequences together)."""
    chat_template: str | None
    stop_token_ids: list[int]
    warnings: list[str]
    trained_tokens: int
    format: str = ""
    lines: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def kind(self) -> str:
        return formats.kind_of(self.format)


@dataclass
class Analysis:
    """Everything `tailor data check` reports: the problems and, with a tokenizer, the store."""

    parsed: formats.Parsed
    problems: Problems
    store: Store | None = None
    template_warning: str | None = None


# ---------------------------------------------------------------------------------------------


def conversations(path) -> list:
    """Parsed, validated examples of the file's kind: Conversations, Preferences or Texts
    (raises DataError on any error)."""
    parsed = formats.read(path)
    if parsed.problems.error_count:
        raise DataError(parsed.problems.report())
    return parsed.items


def analyse(path, tokenizer=None, *, chat_template: str | None = None, use_cache: bool = True) -> Analysis:
    """Validate `path`; with a tokenizer also render it. Returns every problem found, never raises
    for a bad file (only for a missing template choice or the like)."""
    path = Path(path)
    if tokenizer is not None:
        # raw text is read without a chat template: none is added to a base model that lacks one
        text = formats.peek_kind(path) == "text"
        template_warning = None if text else ensure_chat_template(tokenizer, chat_template)
        key = dataset_key(path, tokenizer) if use_cache and path.is_file() else None
        if key and Store.exists(cache_root() / key):
            store = Store(cache_root() / key)
            return Analysis(_cached_parse(path, store), _cached_problems(path, store), store, template_warning)
    else:
        template_warning = None
    parsed = formats.read(path)
    analysis = Analysis(parsed, parsed.problems, None, template_warning)
    if tokenizer is None or not parsed.items:
        return analysis
    # Render even when some lines have errors, so template refusals are reported in the same pass;
    # only a dataset without errors is cached (the others are read into memory and deleted).
    root = cache_root() if key else Path(tempfile.mkdtemp(prefix="tailor-data-"))
    writer = StoreWriter(root / (key or "store"))
    try:
        render_into(writer, parsed, tokenizer)
    except BaseException:
        writer.abort()
        raise
    meta = {"format": parsed.format, "lines": parsed.lines,
            "problems": [p.to_json() for p in parsed.problems.items]}
    if key and not parsed.problems.error_count:
        analysis.store = Store(writer.finish(meta))
        return analysis
    folder = writer.finish(meta, target=writer.tmp.with_name(writer.tmp.name + "-done"))
    analysis.store = Store(folder, in_memory=True)
    shutil.rmtree(folder if key else root, ignore_errors=True)
    return analysis


def _cached_parse(path: Path, store: Store) -> formats.Parsed:
    return formats.Parsed(path, store.meta["format"], [], _cached_problems(path, store), store.meta["lines"])


def _cached_problems(path: Path, store: Store) -> Problems:
    problems = Problems(path)
    problems.items = [Problem(**p) for p in store.meta["problems"]]
    return problems


# ---------------------------------------------------------------------------------------------


def prepare(path, tokenizer, *, max_length: int | None = None, truncate: bool = False,
            chat_template: str | None = None, use_cache: bool = True) -> Prepared:
    """Validate (DataError on any error), ensure the chat template, render every example, apply
    max_length by the data's kind (see tailor.data.examples), cache by content hash."""
    analysis = analyse(path, tokenizer, chat_template=chat_template, use_cache=use_cache)
    if analysis.problems.error_count or analysis.store is None:
        raise DataError(analysis.problems.report())
    store = analysis.store
    warnings = [p.text() for p in analysis.problems.warnings]
    if analysis.template_warning:
        warnings.insert(0, analysis.template_warning)
    kind = formats.kind_of(store.meta["format"])
    if kind == "preference":
        examples, notes = select_pairs(store, max_length, truncate)
        lengths, lines, trained = examples.lengths, examples.chosen.lines, (
            trained_tokens(examples.chosen) + trained_tokens(examples.rejected))
    else:
        if kind == "text":
            examples, notes = text_rows(store, max_length), []
        else:
            rows, kept, notes = select(store, max_length, truncate)
            examples = ExampleView(store, store.index[rows, 0], kept, store.index[rows, 3])
        lengths, lines, trained = examples.lengths, examples.lines, trained_tokens(examples)
    warnings += list(notes.values()) if isinstance(notes, dict) else notes
    if not len(examples):
        raise DataError(f"{path}: no example is left to train on. " + " ".join(notes))
    return Prepared(examples, lengths, getattr(tokenizer, "chat_template", None), stop_token_ids(tokenizer),
                    warnings, trained, store.meta["format"], np.asarray(lines).copy())
