"""The training loop: one loop for every objective and method, readable top to bottom in `_steps`.

the objective's micro-batch: forward (model body) -> its loss -> backward, for each micro-batch
of the step -> clip -> optimizer step -> lr schedule -> log -> eval -> save.
What differs between objectives (supervised, DPO, GRPO) is the objective's (train/objectives): it
builds the step's micro-batches (GRPO: samples and grades them first) and their loss, already
divided by the WHOLE step's denominators (SFT: its trained tokens; DPO: its pairs; GRPO: its reply
tokens or replies), so grad-accum 4 x batch 1 gives the very
gradient of batch 4. Under torchrun each rank trains its share of the step's micro-batches and
the gradients are summed across ranks, so N ranks give the gradient of one process with the
same global batch (see train/distributed.py).
"""

from __future__ import annotations

import contextlib
import math
import resource
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tailor.train import distributed, memory
from tailor.train.config import TrainConfig


@dataclass
class TrainResult:
    out: Path
    final: Path | None  # the final model/adapter folder (None when interrupted)
    step: int
    losses: list[float]  # train loss per optimizer step, this process and any resumed-from run
    val: dict  # last evaluation: val_loss, val_accuracy
    interrupted: bool = False
    stop_signal: int | None = None  # the signal that stopped an interrupted run (SIGINT, SIGTERM)
    tokens_per_s: float = 0.0
    peak_rss_mb: float = 0.0
    samples: list[dict] = field(default_factory=list)


@dataclass
class Position:
    """Where the run is: what a checkpoint must remember to continue exactly."""

    step: int = 0
    epoch: int = 0
    index: int = 0  # optimizer steps already taken in this epoch's order
    tokens_seen: int = 0
    skipped_steps: int = 0  # fp16 steps skipped for inf/nan gradients (loss scaling)


def train(cfg: TrainConfig, *, quiet: bool = False) -> TrainResult:
    """Fine-tune as `cfg` says; returns where the outputs are and how it went. With
    cfg.push_to_hub, final/ is then pushed to that Hub repo (the token is checked first)."""
    from tailor.export import hub
    from tailor.train.session import Session

    from tailor import models

    with _quiet_libraries(), distributed.process_group(models.pick_device(cfg.device)):
        token = hub.preflight(cfg.push_to_hub) if cfg.push_to_hub and distributed.is_main() else None
        session = Session.open(cfg, quiet=quiet)
        try:
            result = _run(session)
        except torch.OutOfMemoryError as exc:  # the plan (train/memory.py) misjudged: end with a checkpoint
            raise memory.out_of_memory(session, exc) from None
        finally:
            session.close()
    if token and result.final is not None:
        hub.push_after_training(result.final, cfg.push_to_hub, token=token, quiet=quiet)
    return result


def _run(s) -> TrainResult:
    body, head = s.parts
    params = [p for p in s.model.parameters() if p.requires_grad]
    stop = _StopFlag()
    try:
        _steps(s, body, head, params, stop)
    finally:
        stop.restore()
    return s.interrupted(stop.agreed) if stop.requested and s.position.step < s.total_steps else s.finish()


def _steps(s, body, head, params, stop) -> None:
    cfg, pos, opt, sched, obj = s.cfg, s.position, s.optimizer, s.scheduler, s.objective
    window_tokens, window_time = 0, 0.0  # tokens/s counts training compute, not evals or saves
    while pos.step < s.total_steps and not stop.requested:
        plan = s.plan(pos.epoch)
        if pos.index >= len(plan):
            pos.epoch, pos.index = pos.epoch + 1, 0
            continue
        t0 = time.perf_counter()
        work = obj.begin(plan[pos.index])  # the whole (global) step's denominators, known up front
        sums = dict.fromkeys(obj.sums, 0.0)
        for micro in distributed.micro_batches(work.micro, s.rank, s.world):  # one process: the whole step
            micro, weight = distributed.padding(work.micro, micro)  # FSDP: weight 0 for a rank with no share
            with s.precision.autocast():
                loss, got = obj.loss(body, head, micro, work)
            s.precision.backward(loss * weight if weight != 1 else loss)  # fp16: loss scaled first
            for k, v in got.items():
                sums[k] += v * weight
        distributed.sum_gradients(params)  # every rank's share -> the whole step's gradient
        sums = dict(zip(sums, distributed.total(*sums.values())))
        lr = opt.param_groups[0]["lr"]
        grad_norm, skipped = s.precision.step(opt, params, cfg.max_grad_norm or float("inf"))  # clip, step
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens = int(sums["tokens"])
        pos.step, pos.index, pos.tokens_seen = pos.step + 1, pos.index + 1, pos.tokens_seen + tokens
        pos.skipped_steps += skipped
        window_tokens, window_time = window_tokens + tokens, window_time + time.perf_counter() - t0
        if pos.step % cfg.log_every == 0 or pos.step == s.total_steps:
            s.log_step({"step": pos.step, "epoch": round(pos.epoch + pos.index / len(plan), 4),
                        **obj.record(sums, work), "lr": lr, "grad_norm": float(grad_norm),
                        "tokens_per_s": window_tokens / max(window_time, 1e-9), "tokens": tokens,
                        "tokens_seen": pos.tokens_seen,
                        **({"skipped": skipped, "skipped_steps": pos.skipped_steps} if s.precision.scaler else {})})
            window_tokens, window_time = 0, 0.0
        if pos.step % s.eval_every == 0 and pos.step < s.total_steps:
            s.evaluate()
        stop.agree()  # every rank stops after the same step, whichever got the signal
        if (pos.step % s.save_every == 0 or stop.requested) and pos.step < s.total_steps:
            s.save_checkpoint()


class _StopFlag:
    """Ctrl-C (SIGINT) or SIGTERM (how clusters preempt a job and services stop one) asks the loop
    to stop after the current step; it then saves a checkpoint and says how to resume. A second
    signal stops at once: KeyboardInterrupt for Ctrl-C, exit status 143 for SIGTERM. Under torchrun
    a Ctrl-C reaches each rank twice (from the terminal, then passed on by torchrun): a repeat of
    the same signal within a second or two is that one signal."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    ECHO_S = 2.0

    def __init__(self):
        self.signum: int | None = None  # the signal this process got
        self.agreed: int | None = None  # the one all ranks act on, from the last `agree`
        self._at = -math.inf
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    @property
    def requested(self) -> bool:
        return self.agreed is not None

    def agree(self) -> None:
        """Once per step, on every rank: a signal acts only from here, so that no rank saves (a
        collective) while another starts the next step."""
        self.agreed = distributed.highest(self.signum or 0) or None

    def _handle(self, signum, frame):
        if self.signum is not None:
            if signum == self.signum and time.monotonic() - self._at < self.ECHO_S and distributed.launched():
                return
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.signum, self._at = signum, time.monotonic()
        if not distributed.is_main():
            return
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _quiet_libraries():
    """transformers/peft progress bars and deprecation chatter would drown the training log."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*past_key_values.*")
        # fp16: a step skipped for overflow skips optimizer.step(); the schedule still advances
        warnings.filterwarnings("ignore", message=r".*lr_scheduler\.step\(\)` before `optimizer\.step\(\)`.*")
        yield


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def epochs_total(plan_lengths: list[int], epochs: float) -> int:
    """Steps in `epochs` passes, the last one possibly partial."""
    whole = int(math.floor(epochs))
    steps = sum(plan_lengths[:whole])
    if epochs > whole:
        steps += max(1, int(round((epochs - whole) * plan_lengths[whole])))
    return steps
