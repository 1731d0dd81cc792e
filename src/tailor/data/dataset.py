"""The dataset entry points: a JSONL file -> validated conversations -> rendered, cached examples.

`prepare` is what training calls; `analyse` is what `tailor data check` calls (it never raises
for a bad file: it returns the problems). Both share one pipeline: read and validate, render in
batches into a store (cached by content hash), then apply max_length when reading.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tailor.data import formats
from tailor.data.cache import Store, StoreWriter, cache_root, dataset_key
from tailor.data.problems import Problem, Problems
from tailor.data.render import CONTENT_SEARCH, Renderer, RenderError
from tailor.data.templates import ensure_chat_template, stop_token_ids
from tailor.errors import TailorError

BATCH = 1000  # conversations per tokenizer call: big enough for the Rust batch, small in memory


class DataError(TailorError):
    """The dataset has errors; str() is the full line-numbered report (as `tailor data check`)."""


@dataclass
class Example:
    input_ids: np.ndarray
    labels: np.ndarray
    """Same length as input_ids; -100 where not trained; NOT shifted (the trainer shifts)."""
    line: int
    """1-based line in the JSONL file."""


class ExampleView(Sequence):
    """Examples as views over the store's flat arrays: the token ids exist once."""

    def __init__(self, store: Store, rows: np.ndarray, lengths: np.ndarray):
        self.store, self.rows, self.lengths = store, rows, lengths

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        row = self.store.index[self.rows[i]]
        start, n = int(row[0]), int(self.lengths[i])
        ids = np.asarray(self.store.ids[start:start + n], dtype=np.int64)
        labels = np.where(self.store.mask[start:start + n], ids, -100)
        return Example(ids, labels, int(row[3]))


@dataclass
class Prepared:
    examples: Sequence[Example]
    lengths: np.ndarray
    """Token count per example (after truncation)."""
    chat_template: str
    stop_token_ids: list[int]
    warnings: list[str]
    trained_tokens: int
    format: str = ""
    lines: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass
class Analysis:
    """Everything `tailor data check` reports: the problems and, with a tokenizer, the store."""

    parsed: formats.Parsed
    problems: Problems
    store: Store | None = None
    template_warning: str | None = None


# ---------------------------------------------------------------------------------------------


def conversations(path) -> list[formats.Conversation]:
    """Parsed, validated conversations (raises DataError on any error)."""
    parsed = formats.read(path)
    if parsed.problems.error_count:
        raise DataError(parsed.problems.report())
    return parsed.conversations


def analyse(path, tokenizer=None, *, chat_template: str | None = None, use_cache: bool = True) -> Analysis:
    """Validate `path`; with a tokenizer also render it. Returns every problem found, never raises
    for a bad file (only for a missing template choice or the like)."""
    path = Path(path)
    if tokenizer is not None:
        template_warning = ensure_chat_template(tokenizer, chat_template)
        key = dataset_key(path, tokenizer) if use_cache and path.is_file() else None
        if key and Store.exists(cache_root() / key):
            store = Store(cache_root() / key)
            return Analysis(_cached_parse(path, store), _cached_problems(path, store), store, template_warning)
    else:
        template_warning = None
    parsed = formats.read(path)
    analysis = Analysis(parsed, parsed.problems, None, template_warning)
    if tokenizer is None or not parsed.conversations:
        return analysis
    # Render even when some lines have errors, so template refusals are reported in the same pass;
    # only a dataset without errors is cached (the others are read into memory and deleted).
    root = cache_root() if key else Path(tempfile.mkdtemp(prefix="tailor-data-"))
    writer = StoreWriter(root / (key or "store"))
    try:
        _render_into(writer, parsed, tokenizer)
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


def _render_into(writer: StoreWriter, parsed: formats.Parsed, tokenizer) -> None:
    """Render every conversation into the store; template refusals and empty masks become errors."""
    renderer = Renderer(tokenizer)
    problems, convs = parsed.problems, parsed.conversations
    _check_control_tokens(tokenizer, convs, problems)
    methods: Counter = Counter()
    for at in range(0, len(convs), BATCH):
        batch = convs[at:at + BATCH]
        results = renderer.render_batch(batch)
        if at == 0:
            _verify(tokenizer, batch, results)
        for conv, r in zip(batch, results):
            if isinstance(r, RenderError):
                problems.error(conv.line, "messages", "template_error",
                               f"the chat template refused this conversation: {r}",
                               "change the conversation to what the template accepts (e.g. roles alternating "
                               "user/assistant, no system message), or pick another --chat-template")
            elif not r.mask.any():
                problems.error(conv.line, "messages", "empty_mask",
                               "after rendering with the chat template no token is trained on "
                               "(the template drops the assistant text)",
                               "check the assistant messages' content, or pick another --chat-template")
            else:
                methods[r.method] += 1
                if r.missing:
                    problems.warning(conv.line, "messages", "reply_not_found",
                                     f"{r.missing} assistant reply(ies) not found in the template's rendering; "
                                     "they are not trained on", "check the chat template")
                if r.lost_calls:
                    problems.warning(conv.line, "messages", "tool_calls_not_rendered",
                                     f"the chat template does not write tool calls ({r.lost_calls} lost), so the "
                                     "model would learn replies without them",
                                     "use a model whose template supports tools, or remove tool examples")
                writer.add(r.ids, r.mask, conv.line)
        del batch, results
    if methods[CONTENT_SEARCH]:
        problems.warning(0, "", "template_rewrites_turns",
                         f"{methods[CONTENT_SEARCH]} example(s): the chat template rewrites earlier turns, so their "
                         "reply spans were found by searching each reply's text in the full rendering "
                         "(content-search) instead of by prefix differences",
                         "nothing to do if `tailor data show` marks the right tokens")
    if renderer.end_of_turn is None:
        problems.warning(0, "", "no_end_of_turn", "the chat template writes nothing after an assistant reply, "
                         "so the model will not learn to stop", "use a template that ends each turn with EOS")


def _check_control_tokens(tokenizer, convs, problems: Problems) -> None:
    """Text such as "<|im_end|>" inside a message is tokenised as the control token itself, so the
    model would learn turn boundaries where there are none."""
    specials = sorted({t for t in tokenizer.all_special_tokens} | {
        t.content for t in tokenizer.added_tokens_decoder.values() if t.special}, key=len, reverse=True)
    if not specials:
        return
    pattern = re.compile("|".join(map(re.escape, specials)))
    for conv in convs:
        for i, m in enumerate(conv.messages):
            hit = pattern.search(m.content)
            if hit:
                problems.warning(conv.line, f"messages[{i}].content", "control_token_in_content",
                                 f"the text contains {hit.group()!r}, which the tokenizer reads as a control token",
                                 "remove it or write it differently; the model would learn a false turn boundary")


def _verify(tokenizer, batch, results) -> None:
    """The first example must tokenise exactly as apply_chat_template does; a mismatch is a bug
    in this module, reported as such rather than training on shifted masks."""
    for conv, r in zip(batch, results):
        if isinstance(r, RenderError):
            continue
        want = tokenizer.apply_chat_template(conv.template_messages(), tools=conv.tools, tokenize=True,
                                             return_dict=False)
        if list(want) != r.ids.tolist():
            raise TailorError(f"internal error: the rendering of line {conv.line} differs from the tokenizer's "
                              "apply_chat_template; please report this with the model and the line")
        return


# ---------------------------------------------------------------------------------------------


def prepare(path, tokenizer, *, max_length: int | None = None, truncate: bool = False,
            chat_template: str | None = None, use_cache: bool = True) -> Prepared:
    """Validate (DataError on any error), ensure the chat template, render every conversation,
    drop (default) or truncate (truncate=True) examples over max_length, cache by content hash."""
    analysis = analyse(path, tokenizer, chat_template=chat_template, use_cache=use_cache)
    if analysis.problems.error_count or analysis.store is None:
        raise DataError(analysis.problems.report())
    store = analysis.store
    warnings = [p.text() for p in analysis.problems.warnings]
    if analysis.template_warning:
        warnings.insert(0, analysis.template_warning)
    rows, lengths, notes = select(store, max_length, truncate)
    warnings += notes
    if not len(rows):
        raise DataError(f"{path}: no example is left to train on. " + " ".join(notes))
    trained = _trained_tokens(store, rows, lengths)
    return Prepared(ExampleView(store, rows, lengths), lengths, tokenizer.chat_template,
                    stop_token_ids(tokenizer), warnings, trained, store.meta["format"],
                    store.index[rows, 3].copy())


def select(store: Store, max_length: int | None, truncate: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Which examples to keep and at what length; warnings that count what was dropped or cut."""
    full = store.index[:, 1]
    rows = np.arange(len(full))
    if not max_length or not (full > max_length).any():
        return rows, full.copy(), []
    over = full > max_length
    lines = store.index[over, 3]
    shown = ", ".join(map(str, lines[:10])) + (" ..." if len(lines) > 10 else "")
    if not truncate:
        return (rows[~over], full[~over].copy(),
                [f"{int(over.sum())} example(s) longer than max_length={max_length} tokens were dropped "
                 f"(lines {shown}); pass --truncate to keep them cut to {max_length} tokens, or raise --max-length"])
    lengths = np.minimum(full, max_length)
    keep = np.ones(len(rows), dtype=bool)
    for r in np.flatnonzero(over):  # a cut example must still have something to learn
        start = int(store.index[r, 0])
        keep[r] = bool(store.mask[start:start + max_length].any())
    notes = [f"{int(over.sum())} example(s) longer than max_length={max_length} tokens were cut from the end "
             f"(lines {shown})"]
    if not keep.all():
        notes.append(f"{int((~keep).sum())} of them were dropped: nothing trained was left in their first "
                     f"{max_length} tokens (lines {', '.join(map(str, store.index[~keep, 3][:10]))})")
    return rows[keep], lengths[keep], notes


def _trained_tokens(store: Store, rows: np.ndarray, lengths: np.ndarray) -> int:
    full = store.index[rows, 1]
    total = int(store.index[rows, 2].sum())
    for r, n in zip(rows[lengths < full], lengths[lengths < full]):
        start, trained = int(store.index[r, 0]), int(store.index[r, 2])
        total -= trained - int(store.mask[start:start + n].sum())
    return total
