"""What changes a request's logits before its token is picked: `logit_bias`, OpenAI's frequency
and presence penalties on the tokens generated so far, and a grammar's mask. A request that asks
for none of them has no Shaper, and the engine's step does no work for it.

OpenAI's formulas (API reference, "frequency and presence penalties"):
    logits[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty
with count[j] how often token j was generated so far (the prompt does not count). A bias of -100
is a ban (the token's logit becomes -inf); other biases are added to the logits.
"""

from __future__ import annotations

import torch

from tailor.infer import grammar
from tailor.infer.sampling import SamplingParams

BAN = -100.0


class Shaper:
    """One request's logit changes and the state they need (token counts, the grammar's matcher)."""

    def __init__(self, params: SamplingParams):
        bias = params.logit_bias or {}
        self.bias = {t: v for t, v in bias.items() if v != BAN}
        self.bans = [t for t, v in bias.items() if v == BAN]
        self.frequency, self.presence = params.frequency_penalty, params.presence_penalty
        self.counts: torch.Tensor | None = None  # made on the first step, on the logits' device
        self.matcher = params.grammar.matcher() if params.grammar is not None else None
        self._bias_t: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def of(cls, params: SamplingParams) -> Shaper | None:
        wanted = params.logit_bias or params.frequency_penalty or params.presence_penalty or params.grammar
        return cls(params) if wanted else None

    @property
    def penalised(self) -> bool:
        return bool(self.frequency or self.presence)

    def apply(self, row: torch.Tensor) -> None:
        """Bias and penalties, in place on one row of fp32 logits."""
        if self.bias:
            if self._bias_t is None:
                ids = torch.tensor(list(self.bias), device=row.device)
                self._bias_t = (ids, torch.tensor(list(self.bias.values()), device=row.device, dtype=row.dtype))
            row.index_add_(0, *self._bias_t)
        if self.bans:
            if len(self.bans) >= row.shape[0]:
                raise ValueError("logit_bias bans every token of the vocabulary")
            row[self.bans] = float("-inf")
        if self.penalised and self.counts is not None:
            row -= self.counts * self.frequency + (self.counts > 0).to(row.dtype) * self.presence

    def accept(self, token: int, width: int, device) -> None:
        """The request took `token`: count it and move its grammar on."""
        if self.penalised:
            if self.counts is None:
                self.counts = torch.zeros(width, device=device)
            self.counts[token] += 1
        if self.matcher is not None:
            self.matcher.advance(token)


def shape(logits: torch.Tensor, shapers: list[Shaper | None]) -> None:
    """Apply each row's Shaper to `logits` [B, V] (fp32, changed in place); the masks of all the
    grammar rows are filled in one pass. A row left with no allowed token is caught when its
    token is accepted (the matcher refuses it), so no pass here looks for one."""
    grammar_rows = []
    for i, s in enumerate(shapers):
        if s is None:
            continue
        s.apply(logits[i])
        if s.matcher is not None:
            grammar_rows.append(i)
    if not grammar_rows:
        return
    width = logits.shape[-1]
    matchers = [shapers[i].matcher for i in grammar_rows]
    masks = grammar.fill_masks(matchers, width)
    for m in matchers:
        if m.error:
            raise RuntimeError(f"constrained decoding stopped: {m.error}")
    banned = grammar.banned(masks, width).to(logits.device, non_blocking=True)
    for k, i in enumerate(grammar_rows):
        logits[i].masked_fill_(banned[k], float("-inf"))
