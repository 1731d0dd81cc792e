"""A plain-torch forward for Llama-family models (Llama, Mistral without sliding window, Qwen2),
run over the Hugging Face weights with a KV cache this module controls.

Why not `model.generate`: for a small model the HF loop spends most of each token in Python
and cache bookkeeping. Here q/k/v and gate/up are fused into one matmul each, the cache is a
preallocated tensor indexed by (slot, position), decode runs every active sequence as one batch
with its own position, and nothing syncs with the device until the logits are read.

LoRA adapters stay separate from the base weights so several can be served on one base: each
sequence in a batch names its adapter, and the low-rank update is added to that sequence's rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tailor.infer.kvcache import KVCache
from tailor.infer.sampling import RowLogits

SUPPORTED = {"llama", "mistral", "qwen2"}
# Fused projection -> the HF module names it is made of, in output order.
FUSED = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",),
         "gate_up": ("gate_proj", "up_proj"), "down": ("down_proj",)}


def supports(config) -> bool:
    """True when this forward reproduces the HF model exactly. Logits are plain lm_head outputs
    here, so a config that scales or soft-caps them (tailor.logits) goes to the HF forward."""
    from tailor.logits import LogitTransform

    return (config.model_type in SUPPORTED and getattr(config, "hidden_act", "silu") == "silu"
            and not getattr(config, "sliding_window", None) and not getattr(config, "use_sliding_window", False)
            and getattr(config, "pretraining_tp", 1) == 1 and LogitTransform.of(config).identity)


class Dense:
    """A weight (and bias) for F.linear. On a CPU running bf16, the weight is also packed once
    into oneDNN's blocked layout, which uses AMX and runs about twice as fast at decode sizes."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight, self.bias = weight.contiguous(), bias
        self.packed = None
        if weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and _onednn_ok():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def _onednn_ok() -> bool:
    from tailor.models import cpu_has_fast_bf16

    return (cpu_has_fast_bf16() and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


@dataclass
class Layer:
    ln1: torch.Tensor
    qkv: Dense
    o: Dense
    ln2: torch.Tensor
    gate_up: Dense
    down: Dense
    # adapter id -> fused name -> (A [r, in], B [out, r] with the LoRA scale folded in)
    lora: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)


def _cat(mods, attr):
    parts = [getattr(m, attr) for m in mods]
    if any(p is None for p in parts):
        return None
    return torch.cat([p.detach() for p in parts], 0).contiguous()


class LlamaForward:
    """Prefill one sequence into a cache slot; decode a batch of slots one token each."""

    lora_capable = True

    def __init__(self, model, max_len: int):
        cfg = model.config
        inner = model.model
        self.device = inner.embed_tokens.weight.device
        self.dtype = inner.embed_tokens.weight.dtype
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        self.vocab_size = cfg.vocab_size
        self.max_len = max_len
        self.embed = inner.embed_tokens.weight.detach()
        self.norm = inner.norm.weight.detach()
        self.lm_head = Dense(model.lm_head.weight.detach())
        self.layers = [self._layer(layer) for layer in inner.layers]
        with torch.no_grad():  # HF's own rotary module, so every RoPE variant it knows is exact
            pos = torch.arange(max_len, device=self.device)[None]
            cos, sin = inner.rotary_emb(self.embed[:1], pos)
        self.cos, self.sin = cos[0], sin[0]
        half = self.head_dim // 2  # see _rope_
        self.sin_signed = torch.cat((-self.sin[:, :half], self.sin[:, half:]), -1)
        self.cache = KVCache(len(self.layers), self.n_kv, self.head_dim, max_len, self.dtype, self.device)

    @staticmethod
    def _layer(layer) -> Layer:
        a, m = layer.self_attn, layer.mlp
        qkv = [a.q_proj, a.k_proj, a.v_proj]
        return Layer(ln1=layer.input_layernorm.weight.detach(),
                     qkv=Dense(_cat(qkv, "weight"), _cat(qkv, "bias")),
                     o=Dense(a.o_proj.weight.detach(), None if a.o_proj.bias is None else a.o_proj.bias.detach()),
                     ln2=layer.post_attention_layernorm.weight.detach(),
                     gate_up=Dense(_cat([m.gate_proj, m.up_proj], "weight"), _cat([m.gate_proj, m.up_proj], "bias")),
                     down=Dense(m.down_proj.weight.detach(), None if m.down_proj.bias is None else m.down_proj.bias.detach()))

    # -- LoRA -------------------------------------------------------------------------------

    def add_lora(self, adapter_id: int, weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]):
        """Register an adapter: (layer index, HF module name) -> (A, B*scale)."""
        for i, layer in enumerate(self.layers):
            fused = {}
            for name, parts in FUSED.items():
                if not any((i, p) in weights for p in parts):
                    continue
                fused[name] = self._fuse_lora(i, parts, weights, layer)
            if fused:
                layer.lora[adapter_id] = fused

    def _fuse_lora(self, i, parts, weights, layer):
        """One (A, B) pair for a fused projection: A stacked, B block-diagonal, zeros where a
        part has no LoRA, so a single pair of matmuls covers q, k and v together."""
        outs = [self._part_out(layer, parts, p) for p in parts]
        pairs = [weights.get((i, p)) for p in parts]
        rank = sum(ab[0].shape[0] for ab in pairs if ab is not None)
        in_dim = next(ab[0].shape[1] for ab in pairs if ab is not None)
        a = torch.zeros(rank, in_dim, dtype=self.dtype, device=self.device)
        b = torch.zeros(sum(outs), rank, dtype=self.dtype, device=self.device)
        r0 = o0 = 0
        for out, ab in zip(outs, pairs):
            if ab is not None:
                r = ab[0].shape[0]
                a[r0:r0 + r] = ab[0].to(self.dtype)
                b[o0:o0 + out, r0:r0 + r] = ab[1].to(self.dtype)
                r0 += r
            o0 += out
        return a, b

    def _part_out(self, layer, parts, name):
        if parts[0] == "q_proj":
            kv = self.n_kv * self.head_dim
            return {"q_proj": self.n_heads * self.head_dim, "k_proj": kv, "v_proj": kv}[name]
        if parts[0] == "gate_proj":
            return layer.gate_up.weight.shape[0] // 2
        return {"o_proj": layer.o.weight.shape[0], "down_proj": layer.down.weight.shape[0]}[name]

    def release(self, slot: int) -> None:
        """A slot's sequence ended; its cache rows are simply overwritten by the next one."""

    def remove_lora(self, adapter_id: int) -> None:
        for layer in self.layers:
            layer.lora.pop(adapter_id, None)

    # -- forward ----------------------------------------------------------------------------
    # At batch 1 a token costs ~30 layers x ~25 small ops, each a few microseconds of dispatch,
    # so the forward keeps the op count low: q and k rotate in one go inside the qkv buffer,
    # k and v reach the cache in one indexed write, residuals add in place, and decode attends
    # with SDPA (a bf16 bmm on these shapes is ~10x slower than its fused single-query kernel).

    def _norm(self, x, w):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True).add_(self.eps))
        return w * h.to(x.dtype)

    def _linear(self, x, layer, name, groups):
        y = getattr(layer, name)(x)
        for adapter, rows in groups:
            ab = layer.lora.get(adapter, {}).get(name)
            if ab is None:
                continue
            if rows is None:
                y = y + F.linear(F.linear(x, ab[0]), ab[1])
            else:
                y = y.index_add(0, rows, F.linear(F.linear(x.index_select(0, rows), ab[0]), ab[1]))
        return y

    def _rope_(self, qk, cos, sin):
        """RoPE in place on qk [T, heads, hd] (q and k heads together); cos/sin [T, 1, hd] with
        sin's first half negated, so rotate_half(x) * sin == roll(x, hd/2) * sin_signed exactly."""
        rot = torch.roll(qk, qk.shape[-1] // 2, -1).mul_(sin)
        qk.mul_(cos).add_(rot)

    def _block(self, x, layer, i, cos, sin, groups, attend):
        """One decoder layer; updates x [T, hidden] in place and returns it."""
        n, nq, nk = x.shape[0], self.n_heads * self.head_dim, self.n_kv * self.head_dim
        qkv = self._linear(self._norm(x, layer.ln1), layer, "qkv", groups)
        self._rope_(qkv[:, :nq + nk].view(n, self.n_heads + self.n_kv, self.head_dim), cos, sin)
        q = qkv[:, :nq].view(n, self.n_heads, self.head_dim)
        kv = qkv[:, nq:].view(n, 2, self.n_kv, self.head_dim)
        attn = attend(i, q, kv)
        x.add_(self._linear(attn.reshape(n, nq), layer, "o", groups))
        gate, up = self._linear(self._norm(x, layer.ln2), layer, "gate_up", groups).chunk(2, -1)
        return x.add_(self._linear(F.silu(gate).mul_(up), layer, "down", groups))

    def _logits(self, x):
        return self.lm_head(self._norm(x, self.norm)).float()

    def _rope_tables(self, pos):
        return self.cos[pos][:, None], self.sin_signed[pos][:, None]

    @torch.inference_mode()
    def prefill(self, slot: int, ids: list[int], adapter: int = 0, all_logits: bool = False) -> torch.Tensor:
        """Run a whole prompt for `slot` (its cache is overwritten). Returns the last position's
        logits [V], or every position's as RowLogits with `all_logits`."""
        n = len(ids)
        self.cache.reserve(slot + 1, n)
        tokens = torch.tensor(ids, device=self.device)
        x = self.embed[tokens]
        cos, sin = self.cos[:n, None], self.sin_signed[:n, None]
        groups = [(adapter, None)] if adapter else []

        def attend(i, q, kv):
            cache = self.cache.kv[i]
            cache[:, slot, :, :n] = kv.permute(1, 2, 0, 3)
            k, v = cache[0, slot, :, :n], cache[1, slot, :, :n]
            out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k[None], v[None], is_causal=True,
                                                 enable_gqa=self.n_kv != self.n_heads)
            return out[0].transpose(0, 1)

        for i, layer in enumerate(self.layers):
            x = self._block(x, layer, i, cos, sin, groups, attend)
        if all_logits:  # rows on demand, a block at a time: never the whole [T, V] in float32
            return RowLogits(lambda a, b: self._logits(x[a:b]), n)
        return self._logits(x[-1:])[0]

    @torch.inference_mode()
    def decode(self, slots: list[int], tokens: list[int], positions: list[int],
               adapters: list[int] | None = None) -> torch.Tensor:
        """One token for each slot, at its own position. Returns logits [B, V]."""
        b = len(slots)
        length = max(positions) + 1
        self.cache.reserve(max(slots) + 1, length)
        contiguous = slots == list(range(b))  # the usual case: a view of the cache, no gather
        groups = _groups(adapters or [0] * b, self.device)
        tok = torch.tensor(tokens, device=self.device)
        pos = torch.tensor(positions, device=self.device)
        slot_t = torch.tensor(slots, device=self.device)
        # positions past a sequence's own length hold stale keys: mask them out (not needed
        # when every sequence is at the same position, as at batch 1)
        mask = None
        if min(positions) != length - 1:
            mask = (torch.arange(length, device=self.device)[None] <= pos[:, None])[:, None, None, :]
        return self._decode_core(tok, pos, slot_t, length, groups, contiguous, mask)

    def _decode_core(self, tok, pos, slot_t, length: int, groups, contiguous: bool, mask) -> torch.Tensor:
        """The decode forward on device tensors only: no host reads, no syncs."""
        b = tok.shape[0]
        x = self.embed[tok]
        cos, sin = self._rope_tables(pos)
        gqa = self.n_kv != self.n_heads

        def attend(i, q, kv):
            cache = self.cache.kv[i]
            cache[:, slot_t, :, pos] = kv
            both = cache[:, :b, :, :length] if contiguous else cache[:, slot_t, :, :length]
            out = F.scaled_dot_product_attention(q[:, :, None], both[0], both[1], attn_mask=mask, enable_gqa=gqa)
            return out.view(b, self.n_heads, self.head_dim)

        for i, layer in enumerate(self.layers):
            x = self._block(x, layer, i, cos, sin, groups, attend)
        return self._logits(x)


def _groups(adapters: list[int], device) -> list[tuple[int, torch.Tensor | None]]:
    """(adapter, rows) for each adapter in the batch; rows None when it covers the whole batch."""
    present = sorted(set(adapters))
    if present == [0]:
        return []
    if len(present) == 1:
        return [(present[0], None)]
    return [(a, torch.tensor([i for i, x in enumerate(adapters) if x == a], device=device))
            for a in present if a]
