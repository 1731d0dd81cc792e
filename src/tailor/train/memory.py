"""Fit to memory: before a run loads its weights, estimate its peak memory and, when it would not
fit, pick a smaller micro-batch (more accumulation, the same global batch) and/or gradient
checkpointing; refuse with the options when nothing fits, rather than run out of memory mid-run.
The budget: a CUDA GPU's free memory; on a CPU the RAM available (MemAvailable), or less with
--memory-budget-gb (to leave room for a server beside the run). The estimate is the plain sum
below; bench/gpu_check.py compares it with a measured peak on a GPU.

  weights      full: 4 B/param (fp32 master) + 2 B/param (autocast's bf16/fp16 copies);
               lora: the frozen base in the compute dtype; qlora: ~0.5 B per quantised weight
  training     4 (grad) + 8 (two AdamW moments) B per trainable param, + 4 (fp32 adapters) for lora
  activations  tokens x layers x (ACT_PER_HIDDEN x hidden + ACT_PER_INTER x intermediate) bytes,
               tokens = micro-batch rows x --max-length; with gradient checkpointing only each
               layer's fp32 input (4 x hidden B per token) plus one layer's activations are kept
  loss         the chunked logits (loss.py `_CHUNK_ELEMENTS`) in fp32 twice (logits, their
               gradient) + the fp32 gradient of the picked hidden states
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tailor.errors import TailorError

# Bytes saved for the backward pass per token per layer, per unit of hidden and of intermediate
# size, with 2-byte compute (bf16/fp16 autocast): measured on CPU with
# torch.autograd.graph.saved_tensors_hooks over a LoRA Llama block, tailor's fused body and the
# Hugging Face one (the larger of the two: 25.6 x hidden + 8.2 x intermediate), rounded up. The
# fp32 residual stream and fp32 attention inputs are part of it. Parameters are counted apart.
ACT_PER_HIDDEN = 26
ACT_PER_INTER = 9
# Allocator fragmentation and kernel workspaces on top of the sum; and the share of free memory
# the plan may use.
OVERHEAD = 1.15
USABLE = 0.92
# Halving the micro-batch first costs little speed while it keeps at least this many tokens (a
# GPU is still busy); below it, gradient checkpointing (~30% slower) comes first.
BUSY_TOKENS = 4096
GIB = 2 ** 30


@dataclass(frozen=True)
class Shape:
    """What the estimate needs to know about the model, read from its config without weights."""

    params: int
    quantisable: int  # weights of the decoder layers' linears (what 4-bit quantises)
    lora_params: int  # adapter weights at the run's rank and targets
    hidden: int
    intermediate: int
    layers: int
    vocab: int


@dataclass(frozen=True)
class Run:
    """The knobs the plan may change, and those it reads."""

    method: str
    qlora: bool
    compute_bytes: int  # 2 for bf16/fp16, 4 for fp32
    rows: int  # examples per micro-batch (or batch_tokens // max_length)
    max_length: int
    grad_accum: int
    checkpointing: bool


def estimate(shape: Shape, run: Run) -> int:
    """Peak bytes of a training step (see the module docstring for each term)."""
    from tailor.train.loss import _CHUNK_ELEMENTS

    if run.method == "full":
        trainable = shape.params
        weights = shape.params * (4 + (2 if run.compute_bytes < 4 else 0))
        training = trainable * (4 + 8)
    else:
        trainable = shape.lora_params
        base = shape.params * run.compute_bytes
        if run.qlora:
            base = shape.quantisable // 2 + (shape.params - shape.quantisable) * run.compute_bytes
        weights = base + trainable * 4
        training = trainable * (4 + 8)
    tokens = run.rows * run.max_length
    layer = tokens * (ACT_PER_HIDDEN * shape.hidden + ACT_PER_INTER * shape.intermediate) * run.compute_bytes // 2
    if run.checkpointing:
        activations = tokens * 4 * shape.hidden * shape.layers + layer
    else:
        activations = layer * shape.layers
    loss = 2 * 4 * min(_CHUNK_ELEMENTS, tokens * shape.vocab) + tokens * shape.hidden * 4
    return int((weights + training + activations + loss) * OVERHEAD)


@dataclass(frozen=True)
class Plan:
    run: Run
    estimate: int
    changed: bool


def plan(shape: Shape, run: Run, budget: int, where: str = "GPU memory") -> Plan:
    """The first of: as asked; halve the micro-batch (doubling accumulation) while it stays busy;
    gradient checkpointing; then halve down to one row. Raises when even that does not fit."""
    for cand in _candidates(run):
        need = estimate(shape, cand)
        if need <= budget:
            return Plan(run=cand, estimate=need, changed=cand != run)
    smallest = dataclasses.replace(run, rows=1, grad_accum=run.grad_accum * run.rows, checkpointing=True)
    raise TailorError(
        f"This run needs about {estimate(shape, smallest) / GIB:.1f} GiB of {where} even with gradient "
        f"checkpointing and one example per micro-batch, and {budget / GIB:.1f} GiB is free. Options: "
        + ("--qlora (the base in 4-bit), " if run.method == "lora" and not run.qlora else "")
        + ("--method lora (or --qlora), " if run.method == "full" else "")
        + f"a shorter --max-length (now {run.max_length}), a smaller model, or a GPU with more memory.")


def _candidates(run: Run):
    yield run
    r = run
    while r.rows > 1 and (r.rows // 2) * r.max_length >= BUSY_TOKENS:
        r = _halve(r)
        yield r
    if not r.checkpointing:
        r = dataclasses.replace(r, checkpointing=True)
        yield r
    while r.rows > 1:
        r = _halve(r)
        yield r


def _halve(r: Run) -> Run:
    """Half the rows per micro-batch and twice the micro-batches per step: the same global batch
    (an odd row count goes straight to one row, `rows` times the accumulation)."""
    if r.rows % 2:
        return dataclasses.replace(r, rows=1, grad_accum=r.grad_accum * r.rows)
    return dataclasses.replace(r, rows=r.rows // 2, grad_accum=r.grad_accum * 2)


# ---- the edges: the model's shape from its config, the GPU's free memory, the run's config ----

def shape_of(cfg) -> Shape:
    """Count parameters on the meta device (no weights are read or allocated)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tailor import models

    mcfg = AutoConfig.from_pretrained(str(models.local_folder(cfg.model)))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(mcfg)
    targets = None if cfg.lora_targets == "all-linear" else set(cfg.lora_targets.split(","))
    quantisable = lora_params = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or name.endswith("lm_head"):
            continue
        quantisable += mod.weight.numel()
        if targets is None or name.rsplit(".", 1)[-1] in targets:
            lora_params += cfg.lora_r * (mod.in_features + mod.out_features)
    hidden = mcfg.hidden_size
    inter = getattr(mcfg, "intermediate_size", None) or 4 * hidden
    return Shape(params=sum(p.numel() for p in model.parameters()), quantisable=quantisable,
                 lora_params=lora_params, hidden=hidden, intermediate=inter, layers=mcfg.num_hidden_layers,
                 vocab=mcfg.vocab_size)


def device_memory(device: str) -> tuple[int, int]:
    """(free, total) bytes of this GPU, or of this machine's RAM for "cpu"; tests fake it."""
    if device == "cpu":
        from tailor import cpu

        return cpu.available_memory(), cpu.total_memory()
    import torch

    return torch.cuda.mem_get_info(torch.device(device))


def fit(cfg, prec, say) -> object:
    """The config to train with on a CUDA device or a CPU: `cfg`, or one with a smaller
    micro-batch (batch_size or batch_tokens), more grad_accum and/or gradient checkpointing,
    said through `say`. Other devices (MPS): `cfg` as it is."""
    on_cpu = prec.device == "cpu"
    if not (on_cpu or prec.device.startswith("cuda")):
        return cfg
    free, total = device_memory(prec.device)
    budget = int(free * USABLE)
    if cfg.memory_budget_gb is not None:
        budget = min(budget, int(cfg.memory_budget_gb * GIB))
    rows = cfg.batch_tokens // cfg.max_length if cfg.batch_tokens else cfg.batch_size
    run = Run(method=cfg.method, qlora=cfg.qlora, compute_bytes=prec.compute.itemsize,
              rows=rows, max_length=cfg.max_length, grad_accum=cfg.grad_accum, checkpointing=cfg.gradient_checkpointing)
    try:
        shape = shape_of(cfg)
    except Exception as exc:  # an architecture the meta-device count cannot build: train as asked
        say(f"memory: no estimate for this model ({type(exc).__name__}: {exc}); training as configured")
        return cfg
    chosen = plan(shape, run, budget, "RAM" if on_cpu else "GPU memory")
    head = (f"memory: about {chosen.estimate / GIB:.1f} GiB estimated peak, {free / GIB:.1f} of "
            f"{total / GIB:.1f} GiB {'of RAM available' if on_cpu else 'free on ' + prec.device}"
            + (f", budget {cfg.memory_budget_gb:g} GiB" if cfg.memory_budget_gb is not None else ""))
    if not chosen.changed:
        say(head)
        return cfg
    r = chosen.run
    size = {"batch_tokens": r.rows * cfg.max_length} if cfg.batch_tokens else {"batch_size": r.rows}
    new = dataclasses.replace(cfg, grad_accum=r.grad_accum, gradient_checkpointing=r.checkpointing, **size)
    changes = {**size, "grad_accum": r.grad_accum}
    what = [f"{k} {getattr(cfg, k)} -> {v}" for k, v in changes.items() if getattr(cfg, k) != v]
    if r.checkpointing and not cfg.gradient_checkpointing:
        what.append("gradient checkpointing on")
    say(f"{head}; the run as given would not fit, so: {', '.join(what)} (the same global batch; "
        "set these yourself to choose otherwise)")
    return new


def out_of_memory(session, exc) -> TailorError:
    """What a CUDA out-of-memory error mid-run ends with: the half-done step's gradients dropped,
    a checkpoint of the last completed step where one still fits, and how to go on."""
    import torch

    from tailor.config import flag

    s = session
    s.optimizer.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    saved = s.last_saved == s.position.step
    if not saved and s.position.step > 0:
        try:
            s.save_checkpoint()
            saved = True
        except torch.OutOfMemoryError:
            pass
    cfg, step = s.cfg, s.position.step
    where = (f"a checkpoint of step {step} is saved. Resume with:\n  tailor train --resume {s.out}"
             + ("" if cfg.gradient_checkpointing else f" {flag('gradient_checkpointing')}")
             if saved else "no checkpoint could be saved.")
    return TailorError(
        f"Ran out of GPU memory in step {step + 1} ({str(exc).splitlines()[0] if str(exc) else 'out of memory'}); "
        f"{where}\nTo need less memory from the start: --gradient-checkpointing, a smaller --batch-size with a "
        f"larger --grad-accum, a shorter --max-length (now {cfg.max_length})"
        + (", or --qlora." if cfg.method == "lora" and not cfg.qlora else "."))
