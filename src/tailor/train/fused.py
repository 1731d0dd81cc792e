"""A fused, differentiable training forward for Llama-family bodies (Llama, Mistral without
sliding window, Qwen2), full fine-tuning or PEFT LoRA, returning the final hidden states.

Why: on a CPU, a training step of a small model through the HF modules is dominated not by
matmuls but by thousands of small ops: autocast's per-op dtype casts, PEFT's per-linear
wrappers, RMSNorm and rotary written as many elementwise kernels. Here q/k/v and gate/up are
one matmul each, the LoRA A matrices of a fused projection are one matmul and the B matrices one
block-diagonal matmul (scaling folded in), rotary covers q and k in one pass, and every cast is
explicit (autocast is switched off inside).

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

Packed batches (position ids that restart) and anything unusual (DoRA, LoRA on biases, several
active adapters, quantised bases) go through the HF body instead: `wrap` returns None for an
unsupported model and `FusedBody.__call__` hands packed batches to the HF body.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from tailor.infer.llama import supports

# Projections fused into one matmul, in output order, and where their modules live.
_ATTN, _MLP = ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")


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
        for m in modules:
            if isinstance(m, LoraLayer):
                _check_lora(m)
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
        u, bt = self._lora(h, dtype, training)
        flat = torch.addmm(out.reshape(-1, out.shape[-1]), u.reshape(-1, u.shape[-1]).to(out.dtype),
                           bt.to(out.dtype))
        return flat.view(out.shape)

    def _lora(self, h, dtype, training):
        """(h @ A.T for every adapted part, block-diagonal (B * scale).T): A stacked, one matmul."""
        parts = [x for x in self.loras if x is not None]
        rates = [getattr(p[3], "p", 0.0) for p in parts]
        if training and any(rates):  # each adapted linear draws its own dropout mask, as PEFT does
            u = torch.cat([F.linear(F.dropout(h, r, True), p[0].to(dtype)) for p, r in zip(parts, rates)], -1)
        else:
            a = torch.cat([p[0] for p in parts], 0) if len(parts) > 1 else parts[0][0]
            u = F.linear(h, a.to(dtype))
        blocks = [(x[1] * x[2]) if x is not None else _no_lora(out, h)
                  for x, out in zip(self.loras, self.outs)]
        bmat = torch.block_diag(*blocks) if len(blocks) > 1 else blocks[0]
        return u, bmat.T


def _no_lora(out, h):
    """A [out, 0] block: a part without an adapter gets no columns in the block-diagonal B."""
    return torch.zeros(out, 0, dtype=torch.float32, device=h.device)


def _cat_bias(mods, *, detach):
    if all(m.bias is None for m in mods):
        return None
    parts = [m.bias if m.bias is not None else torch.zeros(m.weight.shape[0], device=m.weight.device,
                                                            dtype=m.weight.dtype) for m in mods]
    parts = [p.detach() if detach else p for p in parts]
    return torch.cat(parts, 0)


def _check_lora(m):
    names = m.active_adapters
    if len(names) != 1 or m.merged or m.disable_adapters:
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
        self.ln1, self.ln2 = layer.input_layernorm, layer.post_attention_layernorm
        self.qkv = _Proj([getattr(a, n) for n in _ATTN])
        self.o = _Proj([a.o_proj])
        self.gate_up = _Proj([getattr(m, n) for n in _MLP])
        self.down = _Proj([m.down_proj])
        self.scaling = getattr(a, "scaling", None)


class FusedBody:
    """Callable like the HF body (input_ids, position_ids, use_cache) -> object with
    `last_hidden_state`; the hidden states are fp32 when the compute dtype is lower."""

    def __init__(self, base, hf_body):
        cfg = base.config
        if not supports(cfg) or getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False):
            raise _Unsupported(getattr(cfg, "model_type", "?"))
        inner = base.model
        if not type(inner.norm).__name__.endswith("RMSNorm"):
            raise _Unsupported("norm")
        self.hf_body, self.inner, self.config = hf_body, inner, cfg
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        self.layers = [_Layer(layer) for layer in inner.layers]
        self._rope = {}

    def __call__(self, input_ids, position_ids=None, use_cache=False, **kw):
        if position_ids is not None or kw:  # packed rows need a block-diagonal mask: HF does that
            return self.hf_body(input_ids=input_ids, position_ids=position_ids, use_cache=use_cache, **kw)
        dtype = _compute_dtype(self.inner.embed_tokens)
        with torch.autocast(input_ids.device.type, enabled=False):
            return SimpleNamespace(last_hidden_state=self.forward(input_ids, dtype))

    def forward(self, input_ids, dtype):
        training = self.inner.training and torch.is_grad_enabled()
        x = self.inner.embed_tokens(input_ids).float()
        cos, sin = self._cos_sin(input_ids.shape[1], x, dtype)
        ckpt = training and getattr(self.inner, "gradient_checkpointing", False)
        for layer in self.layers:
            if ckpt:
                from torch.utils.checkpoint import checkpoint

                x = checkpoint(self._block, x, layer, cos, sin, dtype, training, use_reentrant=False)
            else:
                x = self._block(x, layer, cos, sin, dtype, training)
        return _rms(x, self.inner.norm.weight, self.eps)

    def _cos_sin(self, length, x, dtype):
        key = (length, x.device, dtype)
        if key not in self._rope:
            with torch.no_grad():  # HF's own rotary module, so every RoPE variant it knows is exact
                pos = torch.arange(length, device=x.device)[None]
                cos, sin = self.inner.rotary_emb(x[:1, :1].float(), pos)
            # [1, T, 1, hd] broadcast over heads; sin with the rotate-half sign folded in
            half = cos.shape[-1] // 2
            sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(x.device)
            self._rope = {key: (cos[:, :, None].float(), (sin * sign)[:, :, None].float())}
        return self._rope[key]

    def _block(self, x, layer, cos, sin, dtype, training):
        b, t, _ = x.shape
        nq, nk, hd = self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.head_dim
        h = _rms(x, layer.ln1.weight, self.eps).to(dtype)
        # Rotary and attention in fp32: more exact, and the CPU flash-attention kernel runs its
        # backward ~3x faster in fp32 than in bf16 at these sizes.
        qkv = layer.qkv(h, dtype, training, acc=lambda y: y.float())
        qk, v = qkv.split([nq + nk, nk], -1)  # split, not slicing: its backward is one cat
        qk = qk.unflatten(-1, (self.n_heads + self.n_kv, hd))
        qk = qk * cos + qk.roll(hd // 2, -1) * sin  # rotate-half as a roll with the sign in sin
        q, k = (z.transpose(1, 2) for z in qk.split([self.n_heads, self.n_kv], 2))
        v = v.unflatten(-1, (self.n_kv, hd)).transpose(1, 2)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=layer.scaling,
                                              enable_gqa=self.n_kv != self.n_heads)
        attn = attn.transpose(1, 2).reshape(b, t, nq).to(dtype)
        x = layer.o(attn, dtype, training, acc=lambda y: x + y)  # residual stream stays fp32
        h = _rms(x, layer.ln2.weight, self.eps).to(dtype)
        act = _SwiGLU.apply(layer.gate_up(h, dtype, training), dtype)  # gate_up is fp32 when adapted
        return layer.down(act, dtype, training, acc=lambda y: x + y)


class _SwiGLU(torch.autograd.Function):
    """silu(gate) * up of a [.., 2 * inter] gate_up, returned in the compute dtype.

    An adapted gate_up arrives in fp32 (the precision policy above); autograd would keep that
    fp32 tensor and an fp32 silu for the backward, twice a bf16 MLP's activation memory. This
    keeps only gate_up in the compute dtype and recomputes silu in the backward, which runs in
    the compute dtype as autocast's would: the forward is the exact fp32 one, the memory less
    than before, and on a CPU it is faster than autograd's version in bf16 and fp32 alike."""

    @staticmethod
    def forward(ctx, gate_up, dtype):
        gate, up = gate_up.chunk(2, -1)
        ctx.save_for_backward(gate_up.to(dtype))
        ctx.in_dtype = gate_up.dtype
        return F.silu(gate).mul_(up).to(dtype)

    @staticmethod
    def backward(ctx, grad):
        (gate_up,) = ctx.saved_tensors
        gate, up = gate_up.chunk(2, -1)
        grad = grad.to(gate_up.dtype)
        out = torch.empty_like(gate_up)
        d_gate, d_up = out.chunk(2, -1)
        torch.mul(grad, F.silu(gate), out=d_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=d_gate)
        return out.to(ctx.in_dtype), None


def _rms(x, w, eps):
    return F.rms_norm(x, (x.shape[-1],), w.to(x.dtype), eps)


def _compute_dtype(embed):
    """bf16 (or fp16) when the surrounding code runs under autocast, else the weights' own dtype."""
    # PEFT's trainable-token wrapper builds its whole merged `.weight` on each access: read the
    # wrapped embedding's instead
    embed_weight = getattr(embed, "original_module", embed).weight
    dev = embed_weight.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return embed_weight.dtype
