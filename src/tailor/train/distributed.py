"""Training on several processes with torch.distributed, launched by torchrun.

    torchrun --nproc-per-node 4 -m tailor train cfg.yaml     # or: tailor train cfg.yaml --nproc 4

Data parallel, with the same maths as one process: every rank holds the whole model and walks
the same batch plan, whose steps have grad_accum x world micro-batches of batch_size examples.
Each step's micro-batches are dealt round-robin (`share`); each rank runs forward and backward
on its own, dividing every micro-batch's token-loss sum by the trained tokens of the WHOLE
step (every rank knows it from the plan). Summing the gradients across ranks once per step
(`sum_gradients`) then gives exactly the gradient of one process with the same global batch,
before clipping and the optimizer step, which every rank takes identically.

Why not torch's DistributedDataParallel: DDP synchronises the module whose forward is called,
and tailor calls the model's parts (the fused body, then a chunked loss over the head), so DDP
would see no forward. One flat all-reduce per step is what DDP with `no_sync` on all but the
last micro-batch communicates too; it does not overlap that communication with the backward
pass as DDP's buckets do, which costs time on GPUs, not correctness.

A step whose micro-batches are fewer than the ranks (the end of an epoch) leaves some ranks
without a share: they contribute zero, and every rank still joins every collective, so nothing
hangs. Every rank joins each checkpoint save (RNG states are gathered); only rank 0 writes.

`--parallel fsdp` (full fine-tuning) shards weights, gradients and Adam state with FSDP2
(`shard`, below): the same per-rank loss normalisation, with FSDP2's reduce-scatter set to sum.
Checkpoints, evaluation and final/ use the full state gathered on rank 0 (`whole`), so the
outputs are the same plain folders, and a resume loads them and shards them again.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import sys
import tempfile

import torch
import torch.distributed as dist

# What torchrun tells its workers; a process tailor spawns must not inherit them (it would
# join, or collide with, this job's rendezvous).
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                 "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT",
                 "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RUN_ID",
                 "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_ERROR_FILE", "TORCH_NCCL_ASYNC_ERROR_HANDLING")
# How long a rank waits in a collective for the others (rank 0's evaluation included) before it
# fails: a rank that dies is noticed by torchrun at once; this bounds a rank that hangs.
TIMEOUT = datetime.timedelta(minutes=30)
_BUCKET = 1 << 24  # gradient elements per all-reduce: bounds the extra memory of the flat copy
_device = "cpu"


def launched() -> bool:
    """True inside a process that torchrun started (even a world of one)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0, or a single process; also before and after the process group exists."""
    return rank() == 0 if dist.is_initialized() else os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def process_group(device: str):
    """Join torchrun's job for the body of the `with` (nothing to do in a single process):
    NCCL between GPUs, gloo between CPU processes; each rank on its own GPU."""
    global _device
    if not launched() or int(os.environ["WORLD_SIZE"]) < 2 or dist.is_initialized():
        yield
        return
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    _device = f"cuda:{torch.cuda.current_device()}" if cuda else "cpu"
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()
        _device = "cpu"
        _fsdp_units.clear()


def local_device(device: str) -> str:
    """`cuda` means this rank's own GPU under torchrun."""
    if device == "cuda" and world() > 1:
        return f"cuda:{torch.cuda.current_device()}"
    return device


def share(step: list, rank: int, world: int) -> list:
    """This rank's micro-batches of a global step: every `world`-th, starting at `rank`."""
    return step[rank::world]


def sum_gradients(params: list[torch.Tensor]) -> None:
    """Sum each gradient over the ranks, in place. A gradient that no rank has stays None (as in
    one process, where AdamW then skips the weight); one that only some ranks have is zero on
    the others."""
    if world() < 2 or _fsdp_units:  # FSDP2 reduce-scatters them itself
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=_device)
    dist.all_reduce(has)
    live = [p for p, h in zip(params, has.tolist()) if h]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for bucket in _buckets(live):
        flat = torch.cat([p.grad.reshape(-1).to(torch.float32) for p in bucket])
        dist.all_reduce(flat)
        at = 0
        for p in bucket:
            n = p.grad.numel()
            p.grad.copy_(flat[at:at + n].view_as(p.grad))
            at += n


def _buckets(params):
    bucket, size = [], 0
    for p in params:
        if bucket and size + p.numel() > _BUCKET:
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    if bucket:
        yield bucket


def total(*values: float) -> list[float]:
    """The sums over the ranks of a few numbers (losses, token counts)."""
    if world() < 2:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device)
    dist.all_reduce(t)
    return [type(v)(x) for v, x in zip(values, t.tolist())]


def highest(value: int) -> int:
    """The largest value over the ranks: a stop signal that reached any rank stops them all
    after the same step."""
    if world() < 2:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def broadcast(obj):
    """Rank 0's `obj` on every rank (the object itself in a single process)."""
    if world() < 2:
        return obj
    box = [obj if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0, device=torch.device(_device))
    return box[0]


def gather(obj) -> list | None:
    """Every rank's `obj`, in rank order (None in a single process)."""
    if world() < 2:
        return None
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def child_env(env: dict | None = None, *, nproc: int = 1) -> dict:
    """The environment for a process tailor starts, without torchrun's variables. For `nproc`
    ranks on this machine, a thread budget set for the whole job (a service's --train-threads)
    is divided among them, so they do not oversubscribe the cores it was given."""
    out = {k: v for k, v in (os.environ if env is None else env).items() if k not in TORCHRUN_VARS}
    for name in _THREAD_VARS:
        if nproc > 1 and out.get(name, "").isdigit():
            out[name] = str(max(1, int(out[name]) // nproc))
    return out


def relaunch(cfg, *, quiet: bool) -> int:
    """`tailor train --nproc N`: run this config again as N processes on this machine through
    torch.distributed.run (torchrun), and return its exit status. For several machines run
    torchrun yourself (see the README)."""
    import yaml

    from tailor.train.config import to_dict

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="tailor-train-", delete=False) as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={cfg.nproc}",
           "-m", "tailor", "train", f.name, *(["--quiet"] if quiet else [])]
    got = []  # a stop signal: reported as 128 + it, like one process (torchrun itself exits 1)

    def forward(signum, frame):  # a service stopping this job sends SIGTERM here: pass it on
        got.append(signum)
        proc.send_signal(signum)

    try:
        from tailor import lifetime

        proc = subprocess.Popen(cmd, env=child_env(nproc=cfg.nproc), preexec_fn=lifetime.preexec)
        old = signal.signal(signal.SIGTERM, forward)
        try:
            while True:
                try:
                    rc = proc.wait()
                    return 128 + got[0] if got and rc else rc
                except KeyboardInterrupt:  # Ctrl-C reached the ranks too: wait for their checkpoint
                    got.append(signal.SIGINT)
        finally:
            signal.signal(signal.SIGTERM, old)
    finally:
        os.unlink(f.name)


# ---- FSDP2: sharded full fine-tuning (--parallel fsdp) ------------------------------------------
#
# Each decoder layer is one FSDP2 unit and a root wrapper around the body holds the rest
# (embeddings, final norm, lm_head): their weights, gradients and Adam state are split over
# the ranks and gathered for the forward and backward of that unit only. tailor calls the body
# and then its own chunked loss over lm_head's weight: the root wrapper's forward is the body's,
# and it keeps its weights gathered after the forward (reshard_after_forward=False, as torchtune
# does for the root) so the loss reads the whole lm_head; FSDP frees them after the backward.
# The fused body is not used: it concatenates each layer's weights into one storage once,
# which sharded weights that are gathered anew on every forward cannot share.
_fsdp_units: list = []


class _Root(torch.nn.Module):
    """The FSDP2 root: the model (so that every weight is inside it) whose forward is the body's."""

    def __init__(self, model, body):
        super().__init__()
        self.model = model
        object.__setattr__(self, "_body", body)  # a submodule of model: not registered twice

    def forward(self, *args, **kwargs):
        return self._body(*args, **kwargs)


def sharded() -> bool:
    return bool(_fsdp_units)


def shard(model, body, compute_dtype) -> torch.nn.Module:
    """Shard `model` (a full fine-tune, fp32 master weights) over the ranks with FSDP2; return
    the body to call instead of `body`. bf16 compute gathers bf16 weights and reduces gradients
    in fp32 (MixedPrecisionPolicy)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=None if compute_dtype == torch.float32 else compute_dtype,
                              reduce_dtype=torch.float32)
    units = [fully_shard(layer, mp_policy=mp) for layer in body.layers]
    root = fully_shard(_Root(model, body), mp_policy=mp, reshard_after_forward=False)
    for unit in units + [root]:
        # The loss of each rank is already divided by the trained tokens of the whole step, so the
        # step's gradient is the SUM over ranks. FSDP2 averages by default; a divide factor of 1
        # gives the sum, and forcing plain SUM collectives keeps it so on gloo (which has no
        # PREMUL_SUM) and skips NCCL's pre-multiply.
        unit.set_force_sum_reduction_for_comms(True)
        unit.set_gradient_divide_factor(1.0)
    _fsdp_units[:] = units + [root]
    return root


def micro_batches(step: list, rank: int, world: int):
    """This rank's micro-batches of a global step (`share`). Under FSDP every rank must run the
    same number of forwards (each gathers weights with the others): a rank with a shorter share
    gets padding, `None`, for which the loop trains a copy weighted 0 (zero loss and gradient).
    Gradients are reduce-scattered only after the last micro-batch (FSDP2's no_sync)."""
    mine = share(step, rank, world)
    if not _fsdp_units:
        yield from mine
        return
    from torch.distributed.tensor import DTensor

    n = -(-len(step) // world)
    mine = mine + [None] * (n - len(mine))
    root = _fsdp_units[-1]
    for i, micro in enumerate(mine):
        for unit in _fsdp_units:
            unit.set_requires_gradient_sync(i == n - 1, recurse=False)
        # The loss reads lm_head's weight before it calls the body: gather the root's weights now
        # (its own forward then finds them gathered).
        root.unshard()
        if micro is None:  # nothing trained: lm_head gets no gradient, yet every rank must send one
            for p in root.parameters():
                if not isinstance(p, DTensor) and p.grad is None:
                    p.grad = torch.zeros_like(p)
        yield micro


def padding(step: list, micro) -> tuple[list, float]:
    """(micro-batch, weight): a rank's own micro-batch counts whole; padding (None) runs the
    step's first micro-batch with weight 0 (a forward and backward that train nothing)."""
    return (micro, 1.0) if micro is not None else (step[0], 0.0)


def full_state(model, optimizer=None):
    """The full (unsharded) model and optimizer state dicts on rank 0's CPU, gathered by every
    rank (a collective: all ranks call it); (None, None) on the others."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=opts)
    optim = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    return (weights, optim) if rank() == 0 else (None, None)


def load_optimizer_state(model, optimizer, state: dict) -> None:
    """Load a full optimizer state dict (keyed by parameter names), resharding it as the model is."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))


@contextlib.contextmanager
def whole(model, optimizer=None, *, compute: bool = False):
    """`with whole(model, opt) as (plain, optim_state)`: under FSDP, a plain copy of the model with
    all its weights on rank 0 (for evaluation and writing folders) and the full optimizer state;
    the others get (None, None). Every rank must enter it. Without FSDP: (model, None). The copy
    stays in CPU memory unless it is to `compute` (evaluation): then it is on rank 0's device,
    which must hold the whole model for that while."""
    if not _fsdp_units:
        yield model, None
        return
    weights, optim = full_state(model, optimizer)
    if weights is None:
        yield None, None
        return
    from transformers import AutoModelForCausalLM

    try:  # the weights are overwritten at once: skip their random initialisation
        from transformers.initialization import no_init_weights
    except ImportError:
        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        plain = AutoModelForCausalLM.from_config(model.config, torch_dtype=torch.float32)
    plain.tie_weights()  # as from_pretrained does: a tied lm_head is saved once, as the embeddings
    plain.load_state_dict(weights)
    plain.generation_config = model.generation_config
    if compute:
        plain.to(_device)
    yield plain, optim
    del plain
