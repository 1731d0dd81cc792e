"""The Llama-family decoder layer (Llama, Mistral without sliding window, Qwen2), written once
for training (tailor.train.fused: differentiable, LoRA on one adapter) and inference
(tailor.infer.llama: KV cache, several adapters per batch, packed weights), so the engine
serves the numerics that were trained and every optimisation of the layer lands in both.

What the two forwards do differently reaches `block` as two small arguments, never as flags:
  - `Precision`: the dtype matmuls run in (`compute`) and the dtype of the residual stream,
    rotary and attention (`residual`). Training runs bf16 matmuls over an fp32 residual (see
    tailor.train.fused); the engine keeps both in the model's dtype, so its KV cache and decode
    attention stay half the size;
  - `Ops`: how a fused projection is applied (its weights and LoRA) and how attention sees the
    past (causal over the batch in training; through the KV cache in inference).
Tensors are [batch, time, ...] throughout: a training batch, a prefill (batch 1) or a decode
step (time 1). Without autograd (inference, validation) the residual adds and rotary run in
place: nothing needs the old values, and a decode step then allocates less.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

SUPPORTED = {"llama", "mistral", "qwen2"}
# Fused projection -> the HF module names it is made of, in output order.
FUSED = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",),
         "gate_up": ("gate_proj", "up_proj"), "down": ("down_proj",)}

Acc = Callable[[torch.Tensor], torch.Tensor]


def supports(config) -> bool:
    """True when this layer reproduces the HF model exactly. Logits are plain lm_head outputs
    here, so a config that scales or soft-caps them (tailor.logits) goes to the HF forward."""
    from tailor.logits import LogitTransform

    return (config.model_type in SUPPORTED and getattr(config, "hidden_act", "silu") == "silu"
            and not getattr(config, "sliding_window", None) and not getattr(config, "use_sliding_window", False)
            and getattr(config, "pretraining_tp", 1) == 1 and LogitTransform.of(config).identity)


@dataclass(frozen=True)
class Dims:
    n_heads: int
    n_kv: int
    head_dim: int
    eps: float
    scaling: float | None = None  # attention's softmax scale; None: 1/sqrt(head_dim)

    @classmethod
    def of(cls, model) -> Dims:
        """From an HF causal LM (its config and its first attention module)."""
        cfg = model.config
        n_heads = cfg.num_attention_heads
        layers = model.model.layers
        return cls(n_heads, getattr(cfg, "num_key_value_heads", None) or n_heads,
                   getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads, cfg.rms_norm_eps,
                   getattr(layers[0].self_attn, "scaling", None) if len(layers) else None)


@dataclass(frozen=True)
class Precision:
    compute: torch.dtype  # matmul inputs and outputs
    residual: torch.dtype  # residual stream, rotary, attention


class Ops(Protocol):
    def project(self, i: int, name: str, h: torch.Tensor, acc: Acc | None) -> torch.Tensor:
        """Layer i's fused projection `name` (see FUSED) of h, with its LoRA update. `acc`
        maps the base output to the accumulator the update is added to (a residual sum, an
        upcast); None: the projection's own choice."""

    def attend(self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention of q [B, T, heads, hd] over k, v [B, T, kv_heads, hd] and
        whatever past the forward keeps; returns [B, T, heads, hd]."""


class LayerWeights(Protocol):
    ln1: torch.Tensor
    ln2: torch.Tensor


def block(x, i: int, layer: LayerWeights, dims: Dims, rope, prec: Precision, ops: Ops):
    """Decoder layer i on x [B, T, hidden] (prec.residual); rope = rope_tables' (cos, sin)
    broadcastable to [B, T, 1, head_dim]. Returns the new residual stream."""
    b, t, _ = x.shape
    nh, nkv, hd = dims.n_heads, dims.n_kv, dims.head_dim
    h = rms_norm(x, layer.ln1, dims.eps, prec.compute)
    qkv = ops.project(i, "qkv", h, lambda y: cast(y, prec.residual))
    qk, v = qkv.split([(nh + nkv) * hd, nkv * hd], -1)  # split, not slicing: its backward is one cat
    q, k = rotate(qk.unflatten(-1, (nh + nkv, hd)), *rope).split([nh, nkv], 2)
    attn = cast(ops.attend(i, q, k, v.unflatten(-1, (nkv, hd))).reshape(b, t, nh * hd), prec.compute)
    x = ops.project(i, "o", attn, lambda y: add(x, y))
    h = rms_norm(x, layer.ln2, dims.eps, prec.compute)
    act = swiglu(ops.project(i, "gate_up", h, None), prec.compute)
    return ops.project(i, "down", act, lambda y: add(x, y))


def cast(t, dtype):
    """t in `dtype`. A decode step makes ~20 casts per layer, most of them to the dtype t already
    has: answering those here saves a torch dispatch (~1 us) each, ~0.5 ms a token."""
    return t if t.dtype == dtype else t.to(dtype)


def add(x, y):
    """x + y, in place when no autograd graph needs x again."""
    return x + y if torch.is_grad_enabled() else x.add_(y)


def rms_norm(x, w, eps: float, dtype):
    """HF's RMSNorm, cast to `dtype`: normalised in fp32, rounded to x's dtype, scaled by the
    weight in x's dtype (so a bf16 engine matches HF's bf16 forward bit for bit)."""
    if x.dtype == torch.float32:  # the same numbers, one kernel
        return cast(F.rms_norm(x, (x.shape[-1],), cast(w, torch.float32), eps), dtype)
    return cast(cast(w, x.dtype) * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype), dtype)


def rope_tables(rotary_emb, length: int, device, dtype):
    """(cos, sin) [length, head_dim] from HF's own rotary module, so every RoPE variant it
    knows is exact; sin carries the rotate-half sign (see `rotate`)."""
    with torch.no_grad():
        pos = torch.arange(length, device=device)[None]
        cos, sin = rotary_emb(torch.zeros(1, 1, device=device, dtype=dtype), pos)
    half = cos.shape[-1] // 2
    return cos[0].to(dtype), torch.cat((-sin[0, :, :half], sin[0, :, half:]), -1).to(dtype)


def rotate(qk, cos, sin):
    """RoPE on qk [.., heads, hd] (q and k heads together): rotate_half(x) * sin is
    roll(x, hd/2) * sin with sin's first half negated, exactly."""
    rot = qk.roll(qk.shape[-1] // 2, -1)
    if torch.is_grad_enabled():
        return qk * cos + rot * sin
    return qk.mul_(cos).add_(rot.mul_(sin))


def causal_attention(q, k, v, dims: Dims):
    """Plain causal SDPA over [B, T, heads, hd] inputs (no cache): training's attention."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=True, scale=dims.scaling, enable_gqa=dims.n_kv != dims.n_heads)
    return out.transpose(1, 2)


def swiglu(gate_up, dtype):
    """silu(gate) * up of a [.., 2 * inter] gate_up, in `dtype`."""
    if torch.is_grad_enabled() and gate_up.requires_grad:
        return _SwiGLU.apply(gate_up, dtype)
    gate, up = gate_up.chunk(2, -1)
    return cast(F.silu(gate).mul_(up), dtype)


class _SwiGLU(torch.autograd.Function):
    """An adapted gate_up arrives in fp32 (training's precision policy); autograd would keep
    that fp32 tensor and an fp32 silu for the backward, twice a bf16 MLP's activation memory.
    This keeps only gate_up in the compute dtype and recomputes silu in the backward, which runs
    in the compute dtype as autocast's would: the forward is the exact fp32 one, the memory less
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


# -- LoRA on fused projections -----------------------------------------------------------------

def stack_lora(pairs, outs: list[int]):
    """One (A, B) for a fused projection from its parts' (A [r, in], B [out, r] * scale) or None:
    A stacked and B block-diagonal, with no columns for a part without LoRA, so a single pair of
    matmuls covers q, k and v together. Differentiable (cat, block_diag)."""
    present = [ab for ab in pairs if ab is not None]
    a = torch.cat([ab[0] for ab in present], 0) if len(present) > 1 else present[0][0]
    blocks = [ab[1] if ab is not None else present[0][1].new_zeros(out, 0) for ab, out in zip(pairs, outs)]
    return a, torch.block_diag(*blocks) if len(blocks) > 1 else blocks[0]


def add_lora(out, u, b, rows=None):
    """out + u @ b.T: the low-rank update (u = h @ A.T) added in out's dtype, to the rows
    `rows` of out's flattened [N, out] only when given (one adapter of a mixed batch)."""
    flat = out.reshape(-1, out.shape[-1])
    u = u.reshape(-1, u.shape[-1]).to(out.dtype)
    b = b.to(out.dtype)
    if rows is not None:
        return flat.index_add_(0, rows, F.linear(u, b)).view(out.shape)
    if torch.is_grad_enabled():
        return torch.addmm(flat, u, b.T).view(out.shape)
    return flat.addmm_(u, b.T).view(out.shape)
