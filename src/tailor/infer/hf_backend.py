"""The fallback backend for architectures infer.llama does not cover: the HF model itself,
one DynamicCache per slot, each sequence decoded on its own. Correct for any causal LM,
slower than the fast path; adapters must be merged into the model first."""

from __future__ import annotations

import torch


class HFForward:
    def __init__(self, model, max_len: int):
        self.model = model
        self.device = next(model.parameters()).device
        self.max_len = max_len
        self.caches: dict[int, object] = {}

    @torch.inference_mode()
    def prefill(self, slot: int, ids: list[int], adapter: int = 0, all_logits: bool = False) -> torch.Tensor:
        from transformers import DynamicCache

        cache = DynamicCache()
        out = self.model(input_ids=torch.tensor([ids], device=self.device), past_key_values=cache,
                         use_cache=True, logits_to_keep=0 if all_logits else 1)
        self.caches[slot] = out.past_key_values
        return out.logits[0].float() if all_logits else out.logits[0, -1].float()

    @torch.inference_mode()
    def decode(self, slots, tokens, positions, adapters=None) -> torch.Tensor:
        rows = []
        for slot, token, pos in zip(slots, tokens, positions):
            cache = self.caches[slot]
            extra = cache.get_seq_length() - pos
            if extra > 0:  # a step retried after a failure: drop what the failed try appended
                cache.crop(-extra)  # a negative count means "remove this many" in transformers 4 and 5
            out = self.model(input_ids=torch.tensor([[token]], device=self.device),
                             past_key_values=cache, use_cache=True, logits_to_keep=1)
            self.caches[slot] = out.past_key_values
            rows.append(out.logits[0, -1].float())
        return torch.stack(rows)

    def release(self, slot: int) -> None:
        self.caches.pop(slot, None)
