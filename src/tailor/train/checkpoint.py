"""Step-numbered checkpoints that a crash never leaves half-written, and exact resume.

A checkpoint folder `checkpoint-000040/` holds the weights as a loadable folder (a PEFT adapter
for LoRA, a Hugging Face model for full fine-tuning) with the tokenizer, `state.pt` (optimizer,
scheduler, every RNG state, and fp16's loss scaler) and `meta.json` (step, epoch, position in the epoch's order, tokens
seen, the full config, the loss history). It is written under a temporary name and renamed, so
any folder named checkpoint-* with a meta.json is complete.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from tailor.train.lora import save_options

PREFIX = "checkpoint-"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(out_dir: Path, *, model, tokenizer, optimizer, scheduler, meta: dict, keep: int,
         rank_rngs: list | None = None, scaler=None, optimizer_state: dict | None = None,
         objective_states: list | None = None) -> Path:
    """Write checkpoint-{step:06d} atomically, then drop all but the newest `keep`. Under torchrun
    rank 0 writes it, with every rank's RNG states (`rank_rngs`, in rank order). `scaler`: fp16's
    GradScaler, whose scale and growth count decide which later steps are skipped.
    `optimizer_state`: under FSDP, the full optimizer state gathered from the shards (keyed by
    parameter names, so a resume reshards it) instead of `optimizer.state_dict()`.
    `objective_states`: each rank's objective state (GRPO's replies still to be trained on), in
    rank order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PREFIX}{meta['step']:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=out_dir))
    try:
        model.save_pretrained(str(tmp), **save_options(model))
        tokenizer.save_pretrained(str(tmp))
        by_name = optimizer_state is not None
        torch.save({"optimizer": optimizer_state if by_name else optimizer.state_dict(), "optimizer_by_name": by_name,
                    "scheduler": scheduler.state_dict(),
                    "rng": rng_state(), "rank_rngs": rank_rngs,
                    "scaler": None if scaler is None else scaler.state_dict(),
                    "objective": objective_states}, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if target.exists():  # a re-save of the same step (e.g. the final one after an interrupt)
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in complete(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def complete(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not out_dir.is_dir():
        return []
    found = [p for p in out_dir.glob(f"{PREFIX}*") if p.is_dir() and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def latest(out_dir: Path) -> Path | None:
    found = complete(out_dir)
    return found[-1] if found else None


def read_meta(ckpt: Path) -> dict:
    return json.loads((ckpt / "meta.json").read_text())


def load_state(ckpt: Path, optimizer, scheduler, *, rank: int = 0, scaler=None, model=None) -> None:
    """Restore optimizer, scheduler, RNGs and fp16's loss scaler (the weights are loaded with the
    model); under torchrun, each rank its own RNGs. A checkpoint of a bf16/fp32 run resumed in
    fp16 has no scaler state: the scaler starts fresh."""
    from tailor.train import distributed

    state = torch.load(ckpt / "state.pt", weights_only=False)
    if state.get("optimizer_by_name"):  # written under FSDP: full, keyed by names; sharded as the model is
        distributed.load_optimizer_state(model, optimizer, state["optimizer"])
    else:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rank_rngs"][rank] if state.get("rank_rngs") else state["rng"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])


def objective_state(ckpt: Path, rank: int = 0):
    """This rank's objective state saved in `ckpt` (None when it kept none)."""
    states = torch.load(ckpt / "state.pt", weights_only=False).get("objective")
    return states[rank] if states and rank < len(states) else None
