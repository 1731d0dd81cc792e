"""The generation loop for one sequence: prefill the prompt, then decode with a KV cache."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from tailor.infer.sampling import SamplingParams, sample


@torch.inference_mode()
def generate_ids(model, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
    """Yield new token ids until a stop token, or max_new_tokens. Stop ids are not yielded."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    cache = DynamicCache()
    ids = torch.tensor([prompt_ids], device=device)
    stops = set(params.stop_token_ids)
    for _ in range(params.max_new_tokens):
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = sample(out.logits[0, -1], params, generator)
        if token in stops:
            return
        yield token
        ids = torch.tensor([[token]], device=device)
