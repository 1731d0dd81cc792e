"""Answers from the model being trained: greedy ones for evaluation samples and the demo, and
GRPO's sampled replies (`LiveBackend`, `sample_replies`): the chat template, a KV cache, stop ids.

A Llama-family model (plain, or with one plain PEFT LoRA adapter) answers through the engine's
own forward (tailor.infer.llama, the layer training runs too), in the compute dtype, so the
samples show the numerics `tailor serve` will serve. Anything else answers through its HF
forward, as before."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from tailor.data.templates import render_prompt, stop_token_ids

_LORA_NAME = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)$")


@torch.no_grad()
def greedy_reply(model, tokenizer, messages: list[dict], *, max_new_tokens: int = 64,
                 stop_ids: list[int] | None = None) -> str:
    """The model's greedy answer to `messages` (decoded, without the end-of-turn token)."""
    return greedy_replies(model, tokenizer, [messages], max_new_tokens=max_new_tokens, stop_ids=stop_ids)[0]


@torch.no_grad()
def greedy_replies(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int = 64,
                   stop_ids: list[int] | None = None) -> list[str]:
    """greedy_reply for each conversation; the engine's forward is built once for all of them.
    Under autocast its weights are a copy in the autocast dtype (what `tailor serve` loads)."""
    if not conversations:
        return []
    stops = set(stop_ids or stop_token_ids(tokenizer, getattr(model, "generation_config", None)))
    prompts = [render_prompt(tokenizer, messages) for messages in conversations]
    device = next(model.parameters()).device
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    engine = engine_forward(model, max(map(len, prompts)) + max_new_tokens + 1, dtype)
    step = _hf_steps(model, device) if engine is None else _engine_steps(*engine)
    with torch.autocast(device.type, enabled=engine is None and dtype is not None, dtype=dtype):
        return [tokenizer.decode(_greedy(step, ids, max_new_tokens, stops), skip_special_tokens=True)
                for ids in prompts]


def engine_forward(model, max_len: int, dtype=None):
    """(tailor.infer.llama.LlamaForward, adapter id) over `model`'s current weights, or None
    when the engine's forward does not cover it (architecture, or a PEFT setup beyond one
    plain LoRA adapter on the decoder's linears)."""
    from tailor.infer.llama import LlamaForward, supports

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "config", None) is None or not supports(base.config):
        return None
    pairs = _lora_pairs(model) if base is not model else {}
    if pairs is None:
        return None
    forward = LlamaForward(base, max_len, dtype)
    if pairs:
        forward.add_lora(1, pairs)
    return forward, 1 if pairs else 0


def _lora_pairs(model):
    """(layer, module name) -> (A, B * scale) of a PEFT model's one active plain LoRA adapter,
    or None for anything else PEFT can do (DoRA, trained embeddings or head, other methods)."""
    from peft.tuners.lora import LoraLayer

    from tailor.train.fused import plain_lora

    base = model.get_base_model()
    if type(base.model.embed_tokens) is not torch.nn.Embedding or type(base.lm_head) is not torch.nn.Linear:
        return None
    pairs = {}
    for name, m in model.named_modules():
        if not isinstance(m, LoraLayer):
            continue
        key = _LORA_NAME.search(name)
        if key is None or not plain_lora(m):
            return None
        a = m.active_adapters[0]
        pairs[(int(key[1]), key[2])] = (m.lora_A[a].weight.detach(), m.lora_B[a].weight.detach() * m.scaling[a])
    return pairs or None  # no LoRA layer: another PEFT method (prompt tuning, ...)


def _greedy(step, ids: list[int], max_new_tokens: int, stops: set[int]) -> list[int]:
    out: list[int] = []
    logits = step(ids, 0)
    while len(out) < max_new_tokens:
        token = int(logits.argmax())
        if token in stops:
            break
        out.append(token)
        if len(out) < max_new_tokens:
            logits = step([token], len(ids) + len(out) - 1)
    return out


def _engine_steps(forward, adapter):
    """step(new ids, their first position) -> the last position's logits, via the engine's
    prefill (position 0) and decode, in cache slot 0."""
    def step(ids, pos):
        if pos == 0:
            return forward.prefill(0, ids, adapter)
        return forward.decode([0], ids, [pos], [adapter])[0]
    return step


def _hf_steps(model, device):
    from transformers import DynamicCache

    cache = None

    def step(ids, pos):
        nonlocal cache
        if pos == 0:
            cache = DynamicCache()
        out = model(input_ids=torch.tensor([ids], device=device), past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
        return out.logits[0, -1]
    return step


# ---- GRPO's rollouts: tailor's engine over the policy's live weights --------------------------------


class LiveBackend:
    """The engine's backend over the model being trained, built once and kept in step with it by
    `sync()` before each rollout. LoRA: the engine's forward shares the frozen base's weights (no
    copy where the dtypes agree), and `sync` registers the adapter's current A and B x scale (a
    few MB) as adapter 1, applied live per row. Full fine-tuning: `sync` re-reads the weights that
    the forward holds as fused copies. A model the engine's forward does not cover decodes
    through its own HF forward (infer.hf_backend), adapters and all."""

    def __init__(self, model, max_len: int, dtype=None):
        self.model, self.max_len, self.dtype = model, max_len, dtype
        found = engine_forward(model, max_len, dtype)
        self.lora = found is not None and found[1] != 0
        self.full = found is not None and not self.lora
        if found is None:
            from tailor.infer.hf_backend import HFForward

            self.backend, self.adapter = HFForward(model, max_len), 0
        else:
            self.backend, self.adapter = found

    def sync(self) -> None:
        """The engine's weights := the policy's, as they are now."""
        if self.lora:
            self.backend.add_lora(self.adapter, _lora_pairs(self.model))
        elif self.full:
            self.backend = engine_forward(self.model, self.max_len, self.dtype)[0]


class _SharedPrompts:
    """The engine's backend for one rollout batch, prefilling each distinct prompt once: GRPO
    asks for --num-generations replies to every prompt, and a prompt's keys and values are the
    same for all of them, so the later replies' cache rows are copied from the first's (a few
    MB) instead of computed again. Valid for one batch whose every reply has a slot of its own
    (sample_replies' engine), so no slot is overwritten while another copies from it."""

    def __init__(self, backend):
        self.backend, self.max_len, self.device = backend, backend.max_len, backend.device
        self.seen: dict[tuple, tuple[int, int, torch.Tensor]] = {}

    def prefill(self, slot: int, ids: list[int], adapter: int = 0, all_logits: bool = False):
        key = (tuple(ids), adapter)
        if all_logits or key not in self.seen:
            logits = self.backend.prefill(slot, ids, adapter, all_logits)
            if not all_logits:
                self.seen[key] = (slot, len(ids), logits)
            return logits
        src, n, logits = self.seen[key]
        cache = self.backend.cache
        with torch.inference_mode():  # the cache's tensors are the engine's inference tensors
            cache.reserve(slot + 1, n)
            for kv in cache.kv:
                kv[:, slot, :, :n] = kv[:, src, :, :n]
            return logits.clone()

    def decode(self, *args, **kw):
        return self.backend.decode(*args, **kw)

    def release(self, slot: int) -> None:
        self.backend.release(slot)


@dataclass
class Reply:
    tokens: list[int] = field(default_factory=list)  # sampled ids, the stop token last when one ended the reply
    finish_reason: str | None = None  # stop | length


@torch.no_grad()
def sample_replies(live: LiveBackend, prompts: list[list[int]], params: list, on_done=None) -> list[Reply]:
    """One reply per prompt (each with its SamplingParams: seed, temperature, stops, grammar),
    all in one engine batch: continuous batching decodes every unfinished reply at each step.
    `on_done(i, reply)` is called the moment reply i ends (GRPO grades it then)."""
    from tailor.errors import TailorError
    from tailor.infer.engine import Engine, Request

    cache = getattr(live.backend, "cache", None)
    backend = live.backend if cache is None else _SharedPrompts(live.backend)
    engine = Engine(backend, max_batch=max(1, len(prompts)))  # a slot for every reply: all decode together
    if cache is not None:  # one allocation for the whole batch, not one per admitted reply
        longest = max(map(len, prompts), default=1) + max((p.max_new_tokens for p in params), default=0)
        with torch.inference_mode():
            cache.reserve(len(prompts), min(live.max_len, longest))
    replies = [Reply() for _ in prompts]
    failed = []

    def listen(i):
        def on_event(event):
            reply = replies[i]
            if event.token is not None:
                reply.tokens.append(event.token)
            if event.finish_reason:
                reply.finish_reason = event.finish_reason
                if event.finish_reason not in ("stop", "length"):
                    failed.append(event.error or event.finish_reason)
                elif on_done is not None:
                    on_done(i, reply)
        return on_event

    was = live.model.training
    live.model.eval()
    try:
        for i, (ids, p) in enumerate(zip(prompts, params)):
            engine.submit(Request(list(ids), p, live.adapter, on_event=listen(i)))
        while engine.step():
            pass
    finally:
        live.model.train(was)
    if failed:
        raise TailorError(f"sampling a reply failed: {failed[0]}")
    return replies
