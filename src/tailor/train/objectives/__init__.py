"""Training objectives: what differs between supervised fine-tuning, preference tuning (DPO) and
reinforcement fine-tuning (GRPO), as small plug-ins to the one loop (train/loop.py `_steps`), never trainer classes. Everything
else (accumulation, clipping, scheduling, logging, checkpoints, resume, distribution) is the
loop's, written and tested once.

For each optimizer step of the batch plan, the loop asks its objective for:

    work = objective.begin(step)       the step's micro-batches and the WHOLE step's
                                       denominators, known before any forward, so that
                                       grad-accum and N ranks give the gradient of one big
                                       batch. An objective with a rollout phase (GRPO) generates
                                       its samples here, with the policy's live weights, and
                                       returns them as the step's micro-batches.
    loss, sums = objective.loss(body, head, micro, work)
                                       one micro-batch: the loss to backward, already divided by
                                       the step's denominators, and plain numbers (named in
                                       `objective.sums`) that the loop adds over micro-batches
                                       and ranks
    record = objective.record(sums, work)
                                       what the step logs (metrics.jsonl, the progress line,
                                       job events); `loss` always, and `tokens` for tokens/s
    metrics = objective.validate(model)
                                       the evaluation on the validation data (val_loss, ...)

and `objective.lengths`: the tokens of each training item, which the batch plan balances.
An objective may also have `repeat` (the plan takes each step that many times: GRPO's
--num-iterations), `state()` / `restore(state, plan)` (what a checkpoint keeps beyond the
position: GRPO's replies reused by later steps) and `close()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch


@dataclass
class Work:
    """One optimizer step's work, as the objective prepared it."""

    micro: list  # the step's micro-batches: lists of item indices (or what `begin` generated)
    norm: dict[str, float] = field(default_factory=dict)  # the whole step's denominators


class Objective(Protocol):
    name: str
    sums: tuple[str, ...]  # the numbers `loss` returns, summed over micro-batches and ranks
    lengths: np.ndarray  # tokens per training item

    def begin(self, step: list[list[int]]) -> Work: ...

    def loss(self, body, head, micro, work: Work) -> tuple[torch.Tensor, dict[str, float]]: ...

    def record(self, sums: dict[str, float], work: Work) -> dict: ...

    def validate(self, model) -> dict: ...


def make(session, *, resumed: bool) -> Objective:
    """The objective the session's config names, over its data. DPO's reference log-probs are
    made here (cached: computed once, before any step), so this runs before FSDP shards the
    model; GRPO's engine is built at its first rollout."""
    if session.cfg.objective == "dpo":
        from tailor.train.objectives.dpo import DPO

        return DPO(session, resumed=resumed)
    if session.cfg.objective == "grpo":
        from tailor.train.objectives.grpo import GRPO

        return GRPO(session, resumed=resumed)
    from tailor.train.objectives.sft import SFT

    return SFT(session)
