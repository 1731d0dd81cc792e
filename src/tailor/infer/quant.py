"""Weight-only int8 for the engine's projections: opt-in, for batch-1 decode on a CPU.

Decode at batch 1 reads every weight once per token, so halving the bytes read (int8 instead
of bf16) is the lever. Activations stay in bf16/fp32: only the weights are rounded, one scale
per output channel (symmetric, no zero point), which keeps greedy outputs close to bf16's
(bench/quant_quality.py measures top-1 agreement and the loss delta on the real model).

The kernel is `torch.ops.aten._weight_int8pack_mm` on CPU (x [M, K] bf16 or fp32, weight int8
[N, K], scales [N] in x's dtype), the fastest weight-only int8 path torch has there: 3-10x
ahead of dequantise-then-matmul, and at M=1 level with or a little ahead of bf16 oneDNN. It is
compute-bound rather than bandwidth-bound on a 2-core AVX-512 CPU, so halving the bytes buys
only ~5% per decoded token, and from M=4 it is slower than bf16: use it for batch-1 decode and
for memory, not for batched serving (bench/quant_quality.py has the numbers).
Elsewhere (CUDA, MPS) the weight is dequantised per call: correct, not fast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

QMAX = 127  # symmetric: -127..127, so -w quantises to -q exactly


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 [N, K], fp32 scales [N]) with weight ~= q * scale[:, None], per output row.

    Each scale is rounded up onto the bf16 grid before the weight is divided by it: the kernel
    takes scales in the input's dtype, so a bf16 input would otherwise apply a scale up to 0.4%
    off the one used to round, a per-channel bias. Rounding up keeps |w / scale| <= 127."""
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"expected a 2-D float weight, got {tuple(weight.shape)} {weight.dtype}")
    w = weight.detach().float()
    scale = (w.abs().amax(1) / QMAX).clamp_min(torch.finfo(torch.bfloat16).tiny)
    on_grid = scale.to(torch.bfloat16)
    below = on_grid.float() < scale
    on_grid = torch.where(below, torch.nextafter(on_grid, torch.full_like(on_grid, float("inf"))), on_grid)
    scale = on_grid.float()
    q = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q.contiguous(), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight an int8 projection actually applies."""
    return (q.float() * scale[:, None]).to(dtype)


class Int8Dense:
    """A drop-in for infer.llama.Dense: x [..., K] -> x @ W.T (+ bias) in x's dtype, with W held
    as int8 plus per-row scales. `weight` is the int8 matrix (its shape is the projection's)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight, self.scale = quantize_weight(weight)
        self.weight, self.scale = self.weight.to(weight.device), self.scale.to(weight.device)
        self.bias = None if bias is None else bias.detach()
        # torch 2.13's CPU kernel reads out of bounds for bf16 input unless K % 16 == 0 (a
        # segfault or wrong sums): odd widths get zero columns here and in each input
        self._pad = -self.weight.shape[1] % 16
        self._kernel_weight = F.pad(self.weight, (0, self._pad)) if self._pad else self.weight
        self._scales: dict[torch.dtype, torch.Tensor] = {}  # the scale in each input dtype, cast once

    def _scale_for(self, dtype: torch.dtype) -> torch.Tensor:
        s = self._scales.get(dtype)
        if s is None:
            s = self._scales[dtype] = self.scale.to(dtype)
        return s

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, k = self.weight.shape
        if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float32, torch.float16):
            x2 = x.reshape(-1, k)  # the kernel takes 2-D input, contiguous rows
            if self._pad:
                x2 = F.pad(x2, (0, self._pad))
            elif x2.stride(-1) != 1:
                x2 = x2.contiguous()
            y = torch.ops.aten._weight_int8pack_mm(x2, self._kernel_weight, self._scale_for(x.dtype))
            y = y.view(*x.shape[:-1], n)
        else:
            y = F.linear(x, self.weight.to(x.dtype)) * self._scale_for(x.dtype)
        if self.bias is not None:
            y = y.add_(self.bias.to(y.dtype))
        return y

    @property
    def nbytes(self) -> int:
        padded = self._kernel_weight.nbytes if self._pad else 0
        return self.weight.nbytes + padded + self.scale.nbytes + (0 if self.bias is None else self.bias.nbytes)


def quantize_dense(dense_or_weight, bias: torch.Tensor | None = None) -> Int8Dense:
    """An Int8Dense from a Dense (anything with `.weight` and `.bias`) or a bare weight tensor.
    An Int8Dense comes back as it is."""
    if isinstance(dense_or_weight, Int8Dense):
        return dense_or_weight
    if isinstance(dense_or_weight, torch.Tensor):
        return Int8Dense(dense_or_weight, bias)
    if _is_packed(dense_or_weight):
        raise ValueError("a oneDNN-packed projection keeps no plain weight to quantize; build the forward "
                         "with pack=False (infer.loading.make_backend does when asked for int8)")
    return Int8Dense(dense_or_weight.weight, dense_or_weight.bias if bias is None else bias)


def _is_dense(value) -> bool:
    """A float projection: a callable holding a 2-D float `.weight` (Dense, not a tensor), or a
    packed one (which quantize_dense refuses rather than one left in float unnoticed)."""
    w = getattr(value, "weight", None)
    return (callable(value) and not isinstance(value, (torch.Tensor, Int8Dense))
            and (_is_packed(value) or (isinstance(w, torch.Tensor) and w.dim() == 2 and w.is_floating_point())))


def _is_packed(value) -> bool:
    return getattr(value, "packed", None) is not None and getattr(value, "weight", None) is None


def quantize_layers(layers, names: tuple[str, ...] | None = None) -> int:
    """Replace, in place, each layer's float projections (attributes that are Dense-like, or
    only `names`) with Int8Dense; the float weights are dropped with them. Returns how many
    were replaced. LoRA pairs, norms and tensors are left alone."""
    count = 0
    for layer in layers:
        fields = names or [k for k, v in vars(layer).items() if _is_dense(v)]
        for name in fields:
            setattr(layer, name, quantize_dense(getattr(layer, name)))
            count += 1
    return count


def quantize_forward(forward, lm_head: bool = True) -> int:
    """int8 for an engine forward's projections (forward.layers) and, by default, its lm_head,
    the largest single read of a decode step. Returns how many projections were replaced."""
    count = quantize_layers(forward.layers)
    if lm_head and _is_dense(getattr(forward, "lm_head", None)):
        forward.lm_head = quantize_dense(forward.lm_head)
        count += 1
    return count
