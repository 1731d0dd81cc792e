"""A fused, differentiable training forward for Llama-family bodies (Llama, Mistral without
sliding window, Qwen2), full fine-tuning or PEFT LoRA, returning the final hidden states.

Why: on a CPU, a training step of a small model through the HF modules is dominated not by
matmuls but by thousands of small ops: autocast's per-op dtype casts, PEFT's per-linear
wrappers, RMSNorm and rotary written as many elementwise kernels. Here q/k/v and gate/up are
one matmul each, the LoRA A matrices of a fused projection are one matmul and the B matrices one
block-diagonal matmul (scaling folded in), rotary covers q and k in one pass, and every cast is
explicit (autocast is switched off inside). The layer itself is tailor.nn.llama's, shared with
the inference engine; this module supplies the training side: PEFT's modules as fused
projections, the precision below, attention without a cache, checkpointing.

Precision policy, chosen so the loss tracks fp32 training (this is the one place it is stated;
`_Proj.__call__` implements it for every projection):
  - matmuls run in the compute dtype (bf16); the residual stream, rotary and attention are fp32;
  - every LoRA update is added in fp32 to an fp32 base output: into the fp32 residual for o_proj
    and down_proj, into the upcast output for q/k/v and gate/up. Added to a bf16 output instead,
    an update under half a bf16 step of it is rounded away entirely, as early LoRA updates
    (B starts at zero) are;
  - a projection without LoRA keeps its bf16 output unless its consumer wants fp32 (q/k/v for
    attention, o and down for the residual), which saves memory in full fine-tuning.
Gradients reach the original parameters (torch.cat and casts are differentiable), so the
optimizer, clipping and PEFT saving are unchanged.

PEFT's disable_adapter() is followed at each call (the base alone, as PEFT's layers do): DPO's
reference for LoRA is the same module with its adapters off.

Packed batches (position ids that restart at each sequence) run here with attention per
sequence. Anything unusual (DoRA, LoRA on biases, several active adapters, quantised bases) goes
through the HF body instead: `wrap` returns None for an unsupported model.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from tailor.nn import llama
from tailor.nn.llama import FUSED


def wrap(model, hf_body):
    """A FusedBody for `model` (plain or PEFT-wrapped), or None when it cannot reproduce it.
    Whether to use it at all is the run's `fused` config field (see tailor.train.loss.decoder_parts)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cached = getattr(base, "_tailor_fused", None)
    if cached is not None and cached.hf_body is hf_body:
        return cached
    try:
        body = FusedBody(base, hf_body)
    except _Unsupported:
        return None
    base._tailor_fused = body
    return body


class _Unsupported(Exception):
    pass


class _Proj:
    """One fused projection: frozen or trainable base weights of its parts, and their LoRA."""

    def __init__(self, modules):
        from peft.tuners.lora import LoraLayer

        self.bases, self.loras = [], []
        self.peft = next((m for m in modules if isinstance(m, LoraLayer)), None)  # whose switch disable_adapter() sets
        for m in modules:
            if isinstance(m, LoraLayer):
                _check_lora(m, disabled_ok=True)
                name = m.active_adapters[0]
                self.loras.append((m.lora_A[name].weight, m.lora_B[name].weight, m.scaling[name],
                                   m.lora_dropout[name]))
                m = m.base_layer
            else:
                self.loras.append(None)
            if type(m) is not torch.nn.Linear:
                raise _Unsupported(f"{type(m).__name__} layer")
            self.bases.append(m)
        self.outs = [m.weight.shape[0] for m in self.bases]
        self.trainable = any(m.weight.requires_grad or (m.bias is not None and m.bias.requires_grad)
                             for m in self.bases)
        self.frozen = None if self.trainable else self._share_storage()
        self.has_lora = any(x is not None for x in self.loras)

    def _share_storage(self):
        """Frozen parts: concatenate once, and make the parts views of the result, so the fused
        weight costs no extra memory and the HF modules still see the same numbers."""
        w = torch.cat([m.weight.detach() for m in self.bases], 0)
        b = _cat_bias(self.bases, detach=True)
        r0 = 0
        for m, out in zip(self.bases, self.outs):
            m.weight.data = w[r0:r0 + out]
            if m.bias is not None:
                m.bias.data = b[r0:r0 + out]
            r0 += out
        return w, b

    def weights(self, dtype):
        if self.frozen is not None:
            w, b = self.frozen
            if self.bases[0].weight.data_ptr() != w.data_ptr():  # the model was moved or cast since
                self.frozen = self._share_storage()
                w, b = self.frozen
        else:  # differentiable: gradients flow back into each part's parameter
            w = torch.cat([m.weight.to(dtype) for m in self.bases], 0) if len(self.bases) > 1 else self.bases[0].weight
            b = _cat_bias(self.bases, detach=False)
        return w.to(dtype), None if b is None else b.to(dtype)

    def __call__(self, h, dtype, training, acc=None):
        """acc(base output) + LoRA update, by the module's precision policy. `acc` picks the
        accumulator (e.g. an fp32 residual sum); without one, an adapted projection's output is
        upcast to fp32 so that its update is not rounded into a bf16 base output."""
        w, b = self.weights(dtype)
        y = F.linear(h, w, b)
        if not self.has_lora:
            return y if acc is None else acc(y)
        out = y.float() if acc is None else acc(y)
        if self.peft.disable_adapters:  # PEFT's disable_adapter(): the base alone, in the adapted precision,
            return out                  # so it equals adapters whose update is zero (DPO's reference)
        u, bmat = self._lora(h, dtype, training)
        return llama.add_lora(out, u, bmat)

    def _lora(self, h, dtype, training):
        """(h @ A.T for every adapted part, block-diagonal B * scale): A stacked, one matmul."""
        pairs = [None if x is None else (x[0], x[1] * x[2]) for x in self.loras]
        a, bmat = llama.stack_lora(pairs, self.outs)
        parts = [x for x in self.loras if x is not None]
        rates = [getattr(p[3], "p", 0.0) for p in parts]
        if training and any(rates):  # each adapted linear draws its own dropout mask, as PEFT does
            return torch.cat([F.linear(F.dropout(h, r, True), p[0].to(dtype)) for p, r in zip(parts, rates)], -1), bmat
        return F.linear(h, a.to(dtype)), bmat


def _cat_bias(mods, *, detach):
    if all(m.bias is None for m in mods):
        return None
    parts = [m.bias if m.bias is not None else torch.zeros(m.weight.shape[0], device=m.weight.device,
                                                            dtype=m.weight.dtype) for m in mods]
    parts = [p.detach() if detach else p for p in parts]
    return torch.cat(parts, 0)


def plain_lora(m) -> bool:
    """True when a PEFT LoRA layer is one this module (and the engine) reproduces: one active,
    unmerged adapter, linear A and B, no DoRA, no bias, plain dropout."""
    try:
        _check_lora(m)
    except _Unsupported:
        return False
    return True


def _check_lora(m, disabled_ok: bool = False):
    """The fused projection reproduces this layer (and follows PEFT's disable_adapter() when
    `disabled_ok`: the training forward does, the engine's copy of the weights does not)."""
    names = m.active_adapters
    if len(names) != 1 or m.merged or (m.disable_adapters and not disabled_ok):
        raise _Unsupported("several, merged or disabled adapters")
    name = names[0]
    if m.use_dora.get(name) or m.lora_bias.get(name) or m.lora_B[name].bias is not None:
        raise _Unsupported("DoRA or LoRA bias")
    if name not in m.lora_A or not isinstance(m.lora_A[name], torch.nn.Linear):
        raise _Unsupported("non-linear LoRA")
    if not isinstance(m.lora_dropout[name], (torch.nn.Dropout, torch.nn.Identity)):
        raise _Unsupported("custom dropout")


class _Layer:
    def __init__(self, layer):
        a, m = layer.self_attn, layer.mlp
        self.norms = layer.input_layernorm, layer.post_attention_layernorm
        self.qkv = _Proj([getattr(a, n) for n in FUSED["qkv"]])
        self.o = _Proj([a.o_proj])
        self.gate_up = _Proj([getattr(m, n) for n in FUSED["gate_up"]])
        self.down = _Proj([m.down_proj])

    @property
    def ln1(self):  # read at each call: full fine-tuning trains the norms
        return self.norms[0].weight

    @property
    def ln2(self):
        return self.norms[1].weight


class _TrainOps:
    """tailor.nn.llama's Ops for one training (or validation) forward: one adapter's LoRA fused
    per projection, attention causal over the batch (no cache). Packed rows (`spans`: per row,
    the (start, end) of each sequence in it) attend within each sequence only."""

    def __init__(self, layers, dims, dtype, training, spans=None):
        self.layers, self.dims, self.dtype, self.training, self.spans = layers, dims, dtype, training, spans

    def project(self, i, name, h, acc):
        return getattr(self.layers[i], name)(h, self.dtype, self.training, acc)

    def attend(self, i, q, k, v):
        if self.spans is None:
            return llama.causal_attention(q, k, v, self.dims)
        rows = [torch.cat([llama.causal_attention(q[r:r + 1, a:b], k[r:r + 1, a:b], v[r:r + 1, a:b], self.dims)
                           for a, b in spans], 1) for r, spans in enumerate(self.spans)]
        return torch.cat(rows, 0)


class FusedBody:
    """Callable like the HF body (input_ids, position_ids, use_cache) -> object with
    `last_hidden_state`; the hidden states are fp32 when the compute dtype is lower. Packed rows
    (position ids that restart at each sequence) run here too, each sequence attending to itself
    only, so one row can hold a whole micro-batch without padding (`packs_rows`)."""

    packs_rows = True

    def __init__(self, base, hf_body):
        cfg = base.config
        quantised = getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False)
        if not llama.supports(cfg) or quantised:
            raise _Unsupported(getattr(cfg, "model_type", "?"))
        inner = base.model
        if not type(inner.norm).__name__.endswith("RMSNorm"):
            raise _Unsupported("norm")
        self.hf_body, self.inner, self.config = hf_body, inner, cfg
        self.dims = llama.Dims.of(base)
        self.layers = [_Layer(layer) for layer in inner.layers]
        self._rope = {}

    def __call__(self, input_ids, position_ids=None, use_cache=False, **kw):
        if kw:
            return self.hf_body(input_ids=input_ids, position_ids=position_ids, use_cache=use_cache, **kw)
        dtype = _compute_dtype(self.inner.embed_tokens)
        with torch.autocast(input_ids.device.type, enabled=False):
            return SimpleNamespace(last_hidden_state=self.forward(input_ids, dtype, position_ids))

    def forward(self, input_ids, dtype, position_ids=None):
        training = self.inner.training and torch.is_grad_enabled()
        # Rotary and attention in fp32: more exact, and the CPU flash-attention kernel runs its
        # backward ~3x faster in fp32 than in bf16 at these sizes.
        prec = llama.Precision(compute=dtype, residual=torch.float32)
        spans = None if position_ids is None else _spans(position_ids)
        ops = _TrainOps(self.layers, self.dims, dtype, training, spans)
        x = self.inner.embed_tokens(input_ids).float()
        if position_ids is None:
            rope = self._cos_sin(input_ids.shape[1], x.device)
        else:  # each sequence's own positions: [B, T, 1, hd]
            cos, sin = self._cos_sin(int(position_ids.max()) + 1, x.device)
            rope = cos[position_ids, 0][:, :, None], sin[position_ids, 0][:, :, None]
        ckpt = training and getattr(self.inner, "gradient_checkpointing", False)
        for i, layer in enumerate(self.layers):
            if ckpt:
                from torch.utils.checkpoint import checkpoint

                x = checkpoint(llama.block, x, i, layer, self.dims, rope, prec, ops, use_reentrant=False)
            else:
                x = llama.block(x, i, layer, self.dims, rope, prec, ops)
        return llama.rms_norm(x, self.inner.norm.weight, self.dims.eps, x.dtype)

    def _cos_sin(self, length, device):
        key = (length, device)
        if key not in self._rope:  # [T, 1, hd]: broadcast over batch and heads
            cos, sin = llama.rope_tables(self.inner.rotary_emb, length, device, torch.float32)
            self._rope = {key: (cos[:, None], sin[:, None])}
        return self._rope[key]


def _spans(position_ids) -> list[list[tuple[int, int]]]:
    """Per row, the (start, end) of each packed sequence: a new one starts where the position is 0."""
    out = []
    for row in position_ids.tolist():
        starts = [t for t, p in enumerate(row) if p == 0] + [len(row)]
        out.append(list(zip(starts[:-1], starts[1:])))
    return out


def _compute_dtype(embed):
    """bf16 (or fp16) when the surrounding code runs under autocast, else the weights' own dtype."""
    # PEFT's trainable-token wrapper builds its whole merged `.weight` on each access: read the
    # wrapped embedding's instead
    embed_weight = getattr(embed, "original_module", embed).weight
    dev = embed_weight.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return embed_weight.dtype
