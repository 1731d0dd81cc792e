"""A plain-torch forward for Llama-family models (Llama, Mistral without sliding window, Qwen2),
run over the Hugging Face weights with a KV cache this module controls.

Why not `model.generate`: for a small model the HF loop spends most of each token in Python
and cache bookkeeping. Here q/k/v and gate/up are fused into one matmul each, the cache is a
preallocated tensor indexed by (slot, position), decode runs every active sequence as one batch
with its own position, and nothing syncs with the device until the logits are read.

LoRA adapters stay separate from the base weights so several can be served on one base: each
sequence in a batch names its adapter, and the low-rank update is added to that sequence's rows.

The layer math is tailor.nn.llama's, the same code training runs; this module holds what only
serving needs: weights as `Dense` callables (packed for oneDNN; any callable with the same
interface, such as an int8 one, can stand in), several adapters per batch, the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tailor.infer.kvcache import KVCache
from tailor.infer.sampling import RowLogits
from tailor.nn import llama
from tailor.nn.llama import FUSED

supports = llama.supports  # whether this forward covers a config: infer.loading asks here


class Dense:
    """A weight (and bias) for F.linear. On a CPU running bf16, the weight is also packed once
    into oneDNN's blocked layout (`pack`), which runs about twice as fast at decode sizes on
    AVX512-BF16. `single`: the same weight in a second dtype (fp32), applied to inputs of that
    dtype: the engine runs one-row steps in it where the CPU's bf16 matrix-vector product is
    slower than fp32's (measured by tailor.infer.autotune; Intel AMX at batch 1)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, pack: bool = True,
                 single: tuple[torch.Tensor, torch.Tensor | None] | None = None):
        self.weight, self.bias = weight.contiguous(), bias
        self.dtype, self.shape = weight.dtype, tuple(weight.shape)
        self.packed = None
        if pack and weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and _onednn_ok():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, 1)
            self.weight = None  # the packed copy is the weight now: half the memory (no int8 from it)
        self.single = None  # (weight, bias) in the other dtype
        if single is not None and single[0].dtype != weight.dtype:
            self.single = (single[0].contiguous(), single[1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.single is not None and x.dtype == self.single[0].dtype:
            return F.linear(x, *self.single)
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


def _module(layer, name):
    """An HF decoder layer's linear by its name (q_proj lives in self_attn, gate_proj in mlp)."""
    return getattr(layer.self_attn, name, None) or getattr(layer.mlp, name)


class LlamaForward:
    """Prefill one sequence into a cache slot; decode a batch of slots one token each."""

    lora_capable = True

    def __init__(self, model, max_len: int, dtype: torch.dtype | None = None, *, residual: torch.dtype | None = None,
                 single: torch.dtype | None = None, pack: bool = True):
        """`model`: an HF causal LM (its linear layers may be PEFT-wrapped: their base weights are
        used, adapters come through add_lora); `dtype`: the matmul weights' copy, default their
        own; `residual`: the residual stream's, rotary's, the KV cache's and attention's dtype,
        default `single` or `dtype`; `single`: a second weight copy in this dtype for steps of one
        row (batch-1 decode), whose matmuls then run in it; `pack`: bf16 weights in oneDNN's
        layout. tailor.infer.autotune picks these per CPU."""
        inner = model.model
        self.device = inner.embed_tokens.weight.device
        self.dtype = dtype or inner.embed_tokens.weight.dtype
        self.residual = residual or single or self.dtype
        self.single, self.pack = single, pack
        self.plan = None  # the autotune.Plan that made this forward, when one did
        self.dims = llama.Dims.of(model)
        self.prec = llama.Precision(compute=self.dtype, residual=self.residual)
        self.prec_one = llama.Precision(compute=single, residual=self.residual) if single else self.prec
        self.lora_dtype = self.residual if single else self.dtype
        self.vocab_size = model.config.vocab_size
        self.max_len = max_len
        self.embed = self._r(inner.embed_tokens.weight)
        self.norm = self._r(inner.norm.weight)
        self.lm_head = self._make_dense(model.lm_head.weight, None)
        self.layers = [self._layer(layer) for layer in inner.layers]
        # each HF module's output size, for the zero blocks of a fused LoRA
        self.outs = {n: _module(inner.layers[0], n).out_features for parts in FUSED.values() for n in parts}
        self.cos, self.sin = llama.rope_tables(inner.rotary_emb, max_len, self.device, self.residual)
        self.cache = KVCache(len(self.layers), self.dims.n_kv, self.dims.head_dim, max_len, self.residual,
                             self.device)

    def _r(self, t):
        """A tensor of the residual stream's side (embeddings, norm weights) in its dtype."""
        return t.detach().to(self.residual)

    def _make_dense(self, w, bias) -> Dense:
        """A Dense over the model's weight `w` (and bias), each copy cast from the model's values."""
        def cast(t, dtype):
            return None if t is None else t.detach().to(dtype)

        single = (cast(w, self.single), cast(bias, self.single)) if self.single else None
        return Dense(cast(w, self.dtype), cast(bias, self.dtype), pack=self.pack, single=single)

    def _dense(self, mods) -> Dense:
        """One Dense over the HF linears `mods` (PEFT-wrapped or not), concatenated by rows."""
        mods = [getattr(m, "base_layer", m) for m in mods]
        w = _joined([m.weight.detach() for m in mods])
        bias = None
        if any(m.bias is not None for m in mods):
            bias = torch.cat([m.bias.detach() if m.bias is not None else w.new_zeros(m.weight.shape[0])
                              for m in mods], 0)
        return self._make_dense(w, bias)

    def _layer(self, layer) -> Layer:
        return Layer(ln1=self._r(layer.input_layernorm.weight), ln2=self._r(layer.post_attention_layernorm.weight),
                     **{name: self._dense([_module(layer, p) for p in parts]) for name, parts in FUSED.items()})

    @property
    def precision(self) -> str:
        """The weights' dtype(s) and the residual's, in words (logged, shown by `tailor serve`)."""
        name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
        kind = next((type(layer.qkv).__name__ for layer in self.layers[:1]), "Dense")  # Int8Dense once quantized
        weights = "int8" if kind == "Int8Dense" else name.get(self.dtype, str(self.dtype))
        if self.single:
            return f"{name.get(self.single)} for one sequence, {weights} matmuls for more; {name.get(self.residual)} residual"
        packed = " (oneDNN-packed)" if weights == "bf16" and self.pack and _onednn_ok() else ""
        return f"{weights} matmuls{packed}, {name.get(self.residual, str(self.residual))} residual"

    # -- LoRA -------------------------------------------------------------------------------

    def add_lora(self, adapter_id: int, weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]):
        """Register an adapter: (layer index, HF module name) -> (A, B*scale)."""
        for i, layer in enumerate(self.layers):
            fused = {}
            for name, parts in FUSED.items():
                if not any((i, p) in weights for p in parts):
                    continue
                fused[name] = self._fuse_lora(i, parts, weights)
            if fused:
                layer.lora[adapter_id] = fused

    def _fuse_lora(self, i, parts, weights):
        """One (A, B) pair for a fused projection, as training fuses it (tailor.nn.llama)."""
        pairs = [weights.get((i, p)) for p in parts]
        pairs = [None if ab is None else tuple(t.to(self.device, self.lora_dtype) for t in ab) for ab in pairs]
        return llama.stack_lora(pairs, [self.outs[p] for p in parts])

    def release(self, slot: int) -> None:
        """A slot's sequence ended; its cache rows are simply overwritten by the next one."""

    def remove_lora(self, adapter_id: int) -> None:
        for layer in self.layers:
            layer.lora.pop(adapter_id, None)

    # -- forward ----------------------------------------------------------------------------
    # The layer is tailor.nn.llama's (the one training runs); this side supplies Dense weights,
    # per-row adapters and the cache. At batch 1 a token costs ~30 layers x ~25 small ops, each
    # a few microseconds of dispatch, so the op count stays low: q and k rotate in one go inside
    # the qkv buffer, residuals add in place, and decode attends with SDPA (a bf16 bmm on these
    # shapes is ~10x slower than its fused single-query kernel).

    def _prec(self, rows: int) -> llama.Precision:
        return self.prec_one if rows == 1 else self.prec

    def _logits(self, x):
        compute = self._prec(x.shape[0]).compute
        return self.lm_head(llama.rms_norm(x, self.norm, self.dims.eps, compute)).float()

    def _run(self, x, rope, groups, attend):
        ops = _ServeOps(self.layers, groups, attend)
        prec = self._prec(x.shape[0] * x.shape[1])
        for i, layer in enumerate(self.layers):
            x = llama.block(x, i, layer, self.dims, rope, prec, ops)
        return x

    @torch.inference_mode()
    def prefill(self, slot: int, ids: list[int], adapter: int = 0, all_logits: bool = False) -> torch.Tensor:
        """Run a whole prompt for `slot` (its cache is overwritten). Returns the last position's
        logits [V], or every position's as RowLogits with `all_logits`."""
        n = len(ids)
        self.cache.reserve(slot + 1, n)
        x = self.embed[torch.tensor([ids], device=self.device)]
        rope = self.cos[:n, None], self.sin[:n, None]

        def attend(i, q, k, v):
            cache = self.cache.kv[i]
            cache[0, slot, :, :n] = k[0].transpose(0, 1)
            cache[1, slot, :, :n] = v[0].transpose(0, 1)
            return llama.causal_attention(q, k, v, self.dims)

        x = self._run(x, rope, [(adapter, None)] if adapter else [], attend)[0]
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
        n_kv, head_dim = self.dims.n_kv, self.dims.head_dim
        group = self.dims.n_heads // n_kv

        def attend(i, q, k, v):  # [b, 1, heads, hd]
            cache = self.cache.kv[i]
            cache[0][slot_t, :, pos] = k[:, 0]
            cache[1][slot_t, :, pos] = v[:, 0]
            both = cache[:, :b, :, :length] if contiguous else cache[:, slot_t, :, :length]
            # One query position: the heads that share a kv head become that head's query rows
            # ([b, kv, group, hd]), which is grouped-query attention exactly, with no key copies.
            # CPU SDPA's single-row kernel is slow in bf16 (4-6x fp32's); with rows it is not.
            out = F.scaled_dot_product_attention(q.view(b, n_kv, group, head_dim), both[0], both[1],
                                                 attn_mask=mask, scale=self.dims.scaling)
            return out.view(b, 1, n_kv * group, head_dim)

        rope = self.cos[pos][:, None, None], self.sin[pos][:, None, None]
        return self._logits(self._run(self.embed[tok][:, None], rope, groups, attend)[:, 0])


class _ServeOps:
    """tailor.nn.llama's Ops for one engine forward: Dense weights (or any callable like it),
    each adapter's LoRA added to its own rows, attention through the KV cache."""

    def __init__(self, layers, groups, attend):
        self.layers, self.groups, self.attend = layers, groups, attend

    def project(self, i, name, h, acc):
        layer = self.layers[i]
        y = getattr(layer, name)(h)
        out = y if acc is None else acc(y)
        for adapter, rows in self.groups:
            ab = layer.lora.get(adapter, {}).get(name)
            if ab is not None:
                x = h.reshape(-1, h.shape[-1]) if rows is None else h.reshape(-1, h.shape[-1]).index_select(0, rows)
                a = ab[0]
                out = llama.add_lora(out, F.linear(x if x.dtype == a.dtype else x.to(a.dtype), a), ab[1], rows)
        return out


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """The parts stacked by rows: a view when they already lie one after another in one storage
    (training's fused forward lays a frozen q/k/v out so), so an engine built over a model being
    trained shares its weights instead of copying them; else a copy."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    rows = sum(p.shape[0] for p in parts)
    adjacent = all(p.is_contiguous() and p.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
                   for p in parts)
    at = first.storage_offset()
    for p in parts if adjacent else ():
        adjacent = adjacent and p.storage_offset() == at and p.shape[1:] == first.shape[1:]
        at += p.numel()
    if adjacent and first.is_contiguous():
        return first.as_strided((rows, *first.shape[1:]), first.stride())
    return torch.cat(parts, 0)


def _groups(adapters: list[int], device) -> list[tuple[int, torch.Tensor | None]]:
    """(adapter, rows) for each adapter in the batch; rows None when it covers the whole batch."""
    present = sorted(set(adapters))
    if present == [0]:
        return []
    if len(present) == 1:
        return [(present[0], None)]
    return [(a, torch.tensor([i for i, x in enumerate(adapters) if x == a], device=device))
            for a in present if a]
