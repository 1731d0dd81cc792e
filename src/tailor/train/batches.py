"""Which examples go into which step, and how a micro-batch becomes tensors.

The order is a pure function of (seed, epoch, lengths, batching knobs), so a resumed run only
needs to remember (epoch, step-in-epoch) to continue with exactly the batches it would have seen.

Two ways to spend no compute on padding:
  group  examples of similar length share a micro-batch (sorted inside large shuffled windows);
         rows are right-padded, so with a causal mask no real token ever sees a pad and no
         attention mask is needed at all (SDPA's fast is_causal path).
  pack   examples are concatenated into rows of up to max_length; position ids restart at each
         example, from which transformers builds a block-diagonal causal mask, so packed
         examples never attend to each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE = -100
# Group mode sorts by length inside windows of this many steps' worth of examples: big enough
# that neighbours have similar lengths, small enough that the order stays random.
_SORT_WINDOW_STEPS = 32


@dataclass
class Batch:
    input_ids: torch.Tensor  # [rows, length]
    position_ids: torch.Tensor | None  # [rows, length] when packed, else None (0..length-1)
    target_index: torch.Tensor  # flat positions (rows*length) whose next token is trained
    target_ids: torch.Tensor  # the token expected after each of those positions
    tokens: int  # real (non-pad) tokens
    target_seq: torch.Tensor | None = None  # which of the collated examples (0..n-1) each target is in

    @property
    def trained(self) -> int:
        return int(self.target_ids.numel())


def shifted_targets(labels: np.ndarray) -> np.ndarray:
    """Next-token targets for one example: position t predicts labels[t+1]; the last predicts nothing."""
    out = np.full(len(labels), IGNORE, dtype=np.int64)
    out[:-1] = labels[1:]
    return out


def trained_count(labels: np.ndarray) -> int:
    return int((np.asarray(labels)[1:] != IGNORE).sum())


def plan_epoch(lengths: np.ndarray, epoch: int, *, seed: int, batch_size: int, batch_tokens: int | None,
               grad_accum: int, batching: str, max_length: int) -> list[list[list[int]]]:
    """The epoch's optimizer steps, each a list of micro-batches, each a list of example indices."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if batching == "group":
        per_step = batch_size * grad_accum if batch_tokens is None else max(1, batch_tokens * grad_accum // max(1, int(np.mean(lengths))))
        order = _sort_in_windows(order, lengths, per_step * _SORT_WINDOW_STEPS)
    micro = _micro_batches(order, lengths, batch_size, batch_tokens, batching, max_length)
    steps = [micro[i:i + grad_accum] for i in range(0, len(micro), grad_accum)]
    if batching == "group":  # sorted windows would otherwise run long-to-short; mix the steps again
        steps = [steps[i] for i in rng.permutation(len(steps))]
    return steps


def _sort_in_windows(order: np.ndarray, lengths: np.ndarray, window: int) -> np.ndarray:
    parts = []
    for s in range(0, len(order), window):
        w = order[s:s + window]
        parts.append(w[np.argsort(-lengths[w], kind="stable")])
    return np.concatenate(parts) if parts else order


def _micro_batches(order, lengths, batch_size, batch_tokens, batching, max_length) -> list[list[int]]:
    if batch_tokens is None:
        return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    out: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i in order.tolist():
        n = int(lengths[i])
        # a padded group costs rows x longest; a packed one costs its tokens
        cost = (len(cur) + 1) * max(longest, n) if batching == "group" else sum(int(lengths[j]) for j in cur) + n
        if cur and cost > batch_tokens:
            out.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        out.append(cur)
    return out


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: indices (into `lengths`) per row, each row's total <= capacity."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def collate(examples, indices: list[int], *, batching: str, max_length: int, pad_id: int) -> Batch:
    """Tensors for one micro-batch of `examples[i] for i in indices`."""
    seqs = [(np.asarray(examples[i].input_ids, dtype=np.int64), shifted_targets(np.asarray(examples[i].labels)))
            for i in indices]
    if batching == "pack":
        rows = pack_rows([len(s[0]) for s in seqs], max_length)
    else:
        rows = [[k] for k in range(len(seqs))]
    width = max(sum(len(seqs[k][0]) for k in row) for row in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    tgt = np.full((len(rows), width), IGNORE, dtype=np.int64)
    pos = np.zeros((len(rows), width), dtype=np.int64)
    seq = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for k in row:
            seq_ids, seq_tgt = seqs[k]
            n = len(seq_ids)
            ids[r, at:at + n], tgt[r, at:at + n], pos[r, at:at + n] = seq_ids, seq_tgt, np.arange(n)
            seq[r, at:at + n] = k
            at += n
        pos[r, at:] = np.arange(width - at)  # the pad tail is a sequence of its own
    flat = tgt.reshape(-1)
    where = np.nonzero(flat != IGNORE)[0]
    return Batch(
        input_ids=torch.from_numpy(ids),
        position_ids=torch.from_numpy(pos) if batching == "pack" else None,
        target_index=torch.from_numpy(where),
        target_ids=torch.from_numpy(flat[where]),
        tokens=sum(len(s[0]) for s in seqs),
        target_seq=torch.from_numpy(seq.reshape(-1)[where]),
    )


def step_trained(examples, step: list[list[int]]) -> int:
    """Trained tokens in a whole optimizer step: the loss is divided by this, once per step."""
    return sum(trained_count(examples[i].labels) for micro in step for i in micro)
