"""Turning next-token logits into tokens for a whole batch: greedy, temperature, top-k, top-p,
per-request seeds, and the log-probabilities a client asked for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# Below this a temperature is greedy: logits / 1e-40 overflow to inf, softmax gives NaN and
# multinomial raises (vLLM uses the same cut).
GREEDY_BELOW = 1e-5


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 (or anything below GREEDY_BELOW) = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)  # stop strings, matched on decoded text
    logprobs: bool = False  # report the chosen token's log-probability
    top_logprobs: int = 0  # and this many most likely alternatives
    prompt_logprobs: bool = False  # log-probabilities of the prompt tokens too (completions `echo`)
    frequency_penalty: float = 0.0  # minus this times a token's count in the reply so far (OpenAI's)
    presence_penalty: float = 0.0  # minus this once a token is in the reply (OpenAI's)
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit; -100 bans it
    grammar: object = None  # an infer.grammar.Grammar the reply must follow, built with stop_token_ids


@dataclass
class Choice:
    """One sampled token, with its log-probability and alternatives when asked for."""

    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None
    error: Exception | None = None  # this row's sampling raised; `token` is then meaningless


@dataclass
class RowLogits:
    """Every prompt position's logits, made a block of rows at a time: a long prompt's [T, V]
    float32 (gigabytes for a 150k vocabulary) never exists at once. rows(a, b) -> [b - a, V]."""

    rows: Callable[[int, int], torch.Tensor]
    length: int

    @classmethod
    def of(cls, logits: torch.Tensor) -> RowLogits:
        return cls(lambda a, b: logits[a:b].float(), logits.shape[0])

    def last(self) -> torch.Tensor:
        return self.rows(self.length - 1, self.length)[0]


def make_generator(seed: int | None, device) -> torch.Generator | None:
    if seed is None:
        return None
    # torch takes [-2**63, 2**64) and reads negatives as two's complement: the modulo keeps
    # every seed it accepts as it was, and makes seed + choice index never overflow
    return torch.Generator(device=device).manual_seed(seed % 2**64)


def _sample_one(logits: torch.Tensor, p: SamplingParams, generator) -> torch.Tensor:
    """A 0-d tensor token id drawn from a 1-D logits vector (float32)."""
    logits = logits / p.temperature
    if p.top_k > 0:
        kth = torch.topk(logits, min(p.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if p.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < p.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return torch.multinomial(probs, 1, generator=generator)[0]


def sample_batch(logits: torch.Tensor, params: list[SamplingParams],
                 generators: list[torch.Generator | None], raw: torch.Tensor | None = None) -> list[Choice]:
    """One Choice per row of `logits` [B, V]. Greedy rows share one argmax; the device is read
    once at the end, so a step costs one sync however large the batch. `raw`: the model's logits
    before bias, penalties and masks, which log-probabilities report (vLLM's default too)."""
    logits = logits.float()
    picked = logits.argmax(-1)
    sampled = [i for i, p in enumerate(params) if p.temperature >= GREEDY_BELOW]
    failed: dict[int, Exception] = {}
    if sampled:
        picked = picked.clone()
        for i in sampled:
            try:  # one row's failure is its own; the others (and their seeded generators) go on
                picked[i] = _sample_one(logits[i], params[i], generators[i])
            except Exception as exc:
                failed[i] = exc
    want = [i for i, p in enumerate(params) if (p.logprobs or p.top_logprobs) and i not in failed]
    if not want:
        return [Choice(t, error=failed.get(i)) for i, t in enumerate(picked.tolist())]
    lp = torch.log_softmax((logits if raw is None else raw)[want].float(), -1)
    chosen = lp.gather(1, picked[want][:, None])[:, 0].tolist()
    k = max(params[i].top_logprobs for i in want)
    top_v, top_i = (lp.topk(k, -1) if k else (lp[:, :0], lp[:, :0].long()))
    top_v, top_i = top_v.tolist(), top_i.tolist()
    out = [Choice(t, error=failed.get(i)) for i, t in enumerate(picked.tolist())]
    for row, i in enumerate(want):
        n = params[i].top_logprobs
        out[i].logprob = chosen[row]
        out[i].top = list(zip(top_i[row][:n], top_v[row][:n]))
    return out


def prompt_logprobs(logits: RowLogits, ids: list[int], top: int, block: int = 256) -> list[Choice | None]:
    """Log-probabilities of each prompt token given the ones before it (None for the first),
    `block` positions at a time, so memory is [block, V] whatever the prompt's length."""
    out: list[Choice | None] = [None]
    for a in range(0, len(ids) - 1, block):
        b = min(a + block, len(ids) - 1)
        lp = torch.log_softmax(logits.rows(a, b), -1)
        target = torch.tensor(ids[a + 1:b + 1], device=lp.device)
        chosen = lp.gather(1, target[:, None])[:, 0].tolist()
        tv, ti = lp.topk(top, -1) if top else (lp[:, :0], lp[:, :0].long())
        out += [Choice(t, c, list(zip(i, v))) for t, c, i, v in zip(ids[a + 1:b + 1], chosen, ti.tolist(), tv.tolist())]
    return out


def sample(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None) -> int:
    """One token id from a 1-D logits vector."""
    choice = sample_batch(logits[None], [p], [generator])[0]
    if choice.error is not None:
        raise choice.error
    return choice.token
