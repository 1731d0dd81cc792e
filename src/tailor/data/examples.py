"""What training reads from a rendered store: examples (token ids + labels), preference pairs of
two examples, and which of them a --max-length keeps, at what length.

Examples are views over the store's flat arrays, so the token ids exist once, memory-mapped.
Each kind of data has its own rule for --max-length:
  chat        an example longer than it is dropped (or cut with --truncate, if something
              trained is left);
  preference  a pair is kept whole or not at all: dropped when either sequence is too long (cut
              with --truncate), and always when the prompt alone fills max_length;
  text        the documents, end to end, are cut into rows of max_length tokens: packed, with
              every token trained and nothing dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tailor.data.cache import Store


@dataclass
class Example:
    input_ids: np.ndarray
    labels: np.ndarray
    """Same length as input_ids; -100 where not trained; NOT shifted (the trainer shifts)."""
    line: int
    """1-based line in the JSONL file."""

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Pair:
    """A preference pair as token ids: the prompt with the chosen reply, and with the rejected one."""

    chosen: Example
    rejected: Example
    line: int

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)


class ExampleView(Sequence):
    """Examples as views over the store's flat arrays: `lengths[i]` tokens from `starts[i]`."""

    def __init__(self, store: Store, starts: np.ndarray, lengths: np.ndarray, lines: np.ndarray):
        self.store, self.starts, self.lengths, self.lines = store, starts, lengths, lines

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        start, n = int(self.starts[i]), int(self.lengths[i])
        ids = np.asarray(self.store.ids[start:start + n], dtype=np.int64)
        labels = np.where(self.store.mask[start:start + n], ids, -100)
        return Example(ids, labels, int(self.lines[i]))


class PairView(Sequence):
    """Pairs over two ExampleViews (the store holds each pair as two rows: chosen, rejected)."""

    def __init__(self, chosen: ExampleView, rejected: ExampleView):
        self.chosen, self.rejected = chosen, rejected

    def __len__(self) -> int:
        return len(self.chosen)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        c = self.chosen[i]
        return Pair(c, self.rejected[i], c.line)

    @property
    def lengths(self) -> np.ndarray:
        return self.chosen.lengths + self.rejected.lengths


# ---- --max-length, per kind ------------------------------------------------------------------


def rows_view(store: Store, rows: np.ndarray, lengths: np.ndarray) -> ExampleView:
    return ExampleView(store, store.index[rows, 0], lengths, store.index[rows, 3])


def _lines(store: Store, rows) -> str:
    lines = store.index[rows, 3]
    return ", ".join(map(str, lines[:10])) + (" ..." if len(lines) > 10 else "")


def select(store: Store, max_length: int | None, truncate: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Chat examples: which to keep and at what length; warnings that count what was dropped or cut."""
    full = store.index[:, 1]
    rows = np.arange(len(full))
    if not max_length or not (full > max_length).any():
        return rows, full.copy(), []
    over = full > max_length
    shown = _lines(store, over)
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
                     f"{max_length} tokens (lines {_lines(store, ~keep)})")
    return rows[keep], lengths[keep], notes


def select_pairs(store: Store, max_length: int | None, truncate: bool) -> tuple[PairView, dict[str, str]]:
    """Preference pairs (store rows 2k and 2k+1): kept whole or dropped, see the module docstring.
    The notes say what was dropped or cut, by kind: prompt_too_long, too_long."""
    chosen, rejected = np.arange(0, len(store.index), 2), np.arange(1, len(store.index), 2)
    full_c, full_r = store.index[chosen, 1], store.index[rejected, 1]
    if not max_length:
        return PairView(rows_view(store, chosen, full_c.copy()), rows_view(store, rejected, full_r.copy())), {}
    over = (full_c > max_length) | (full_r > max_length)
    no_room = np.zeros(len(chosen), dtype=bool)
    for k in np.flatnonzero(over):  # the prompt is what precedes the first trained token
        no_room[k] = any(_prompt_length(store, row) >= max_length for row in (chosen[k], rejected[k]))
    notes = {}
    if no_room.any():
        notes["prompt_too_long"] = (f"{int(no_room.sum())} pair(s) have a prompt of max_length={max_length} tokens or more, so "
                     f"nothing of their replies fits: dropped (lines {_lines(store, chosen[no_room])})")
    cut = over & ~no_room
    if cut.any():
        what = "cut from the end" if truncate else "dropped"
        fix = "" if truncate else f"; pass --truncate to keep them cut to {max_length} tokens, or raise --max-length"
        notes["too_long"] = (f"{int(cut.sum())} pair(s) with a sequence longer than max_length={max_length} tokens "
                             f"were {what} (lines {_lines(store, chosen[cut])}){fix}")
    keep = ~no_room & (~over | truncate)
    views = [rows_view(store, rows[keep], np.minimum(full[keep], max_length))
             for rows, full in ((chosen, full_c), (rejected, full_r))]
    return PairView(*views), notes


def _prompt_length(store: Store, row: int) -> int:
    start, n = int(store.index[row, 0]), int(store.index[row, 1])
    mask = np.asarray(store.mask[start:start + n])
    return int(mask.argmax()) if mask.any() else n


def text_rows(store: Store, max_length: int | None) -> ExampleView:
    """Raw text: the documents end to end (each ends with EOS), cut into rows of max_length tokens;
    each row is named by the line its first token comes from. A last row of one token, which
    has nothing to predict, is left out."""
    total = int(store.meta["tokens"])
    if not max_length:
        return rows_view(store, np.arange(len(store.index)), store.index[:, 1].copy())
    starts = np.arange(0, total, max_length, dtype=np.int64)
    lengths = np.minimum(max_length, total - starts)
    starts, lengths = starts[lengths > 1], lengths[lengths > 1]
    docs = np.searchsorted(store.index[:, 0], starts, side="right") - 1
    return ExampleView(store, starts, lengths, store.index[docs, 3])


def trained_tokens(view: ExampleView) -> int:
    """Tokens whose loss is trained (mask True) in the view's examples at their lengths: the
    store's own count for an example read whole, the mask counted for one that is cut."""
    store = view.store
    rows = np.searchsorted(store.index[:, 0], view.starts, side="right") - 1
    whole = (store.index[rows, 0] == view.starts) & (store.index[rows, 1] == view.lengths)
    total = int(store.index[rows[whole], 2].sum())
    for start, n in zip(view.starts[~whole].tolist(), view.lengths[~whole].tolist()):
        total += int(np.count_nonzero(store.mask[start:start + n]))
    return total
