"""The key/value cache: one tensor per layer shaped [2, slots, kv_heads, capacity, head_dim],
keys at [0] and values at [1]. A sequence owns a slot; position p of it lives at
[:, slot, :, p]. Keys and values share a tensor so one indexed write stores both (the fused
qkv projection already lays k and v out side by side). The tensors grow (doubling) as more
slots or longer sequences need them, so a server that never sees a long prompt never pays for
one, and nothing is allocated per token.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, max_len: int, dtype, device,
                 slots: int = 1, capacity: int = 256):
        self.shape = (kv_heads, head_dim)
        self.max_len = max_len
        self.dtype, self.device = dtype, device
        self.slots, self.capacity = slots, min(capacity, max_len)
        self.kv = [self._new(self.slots, self.capacity) for _ in range(layers)]

    def _new(self, slots: int, capacity: int) -> torch.Tensor:
        kv, hd = self.shape
        return torch.zeros(2, slots, kv, capacity, hd, dtype=self.dtype, device=self.device)

    @property
    def k(self) -> list[torch.Tensor]:
        """Per layer, the keys [slots, kv_heads, capacity, head_dim] (a view)."""
        return [t[0] for t in self.kv]

    @property
    def v(self) -> list[torch.Tensor]:
        return [t[1] for t in self.kv]

    def reserve(self, slots: int, length: int) -> None:
        """Make room for `slots` slots of `length` positions (grows, never shrinks)."""
        if length > self.max_len:
            raise ValueError(f"sequence of {length} positions exceeds the cache's {self.max_len}")
        if slots <= self.slots and length <= self.capacity:
            return
        new_slots = max(slots, self.slots)
        new_cap = self.capacity
        while new_cap < length:
            new_cap = min(new_cap * 2, self.max_len)
        for i, old in enumerate(self.kv):
            grown = self._new(new_slots, new_cap)
            grown[:, : self.slots, :, : self.capacity] = old
            self.kv[i] = grown
        self.slots, self.capacity = new_slots, new_cap

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.kv)
