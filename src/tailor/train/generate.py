"""Greedy answers for evaluation samples and the demo: the chat template, a KV cache, stop ids.

Kept inside train/ so evaluation depends only on transformers and the data templates."""

from __future__ import annotations

import torch

from tailor.data.templates import render_prompt, stop_token_ids


@torch.no_grad()
def greedy_reply(model, tokenizer, messages: list[dict], *, max_new_tokens: int = 64,
                 stop_ids: list[int] | None = None) -> str:
    """The model's greedy answer to `messages` (decoded, without the end-of-turn token)."""
    from transformers import DynamicCache

    stops = set(stop_ids or stop_token_ids(tokenizer, getattr(model, "generation_config", None)))
    device = next(model.parameters()).device
    ids = torch.tensor([render_prompt(tokenizer, messages)], device=device)
    cache, out = DynamicCache(), []
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        token = int(logits[0, -1].argmax())
        if token in stops:
            break
        out.append(token)
        ids = torch.tensor([[token]], device=device)
    return tokenizer.decode(out, skip_special_tokens=True)
