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
    if world() < 2:
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


def gather(obj) -> list | None:
    """Every rank's `obj`, in rank order (None in a single process)."""
    if world() < 2:
        return None
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def child_env(env: dict | None = None) -> dict:
    """The environment for a process tailor starts, without torchrun's variables."""
    return {k: v for k, v in (os.environ if env is None else env).items() if k not in TORCHRUN_VARS}


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
        proc = subprocess.Popen(cmd, env=child_env())
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
