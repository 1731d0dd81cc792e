"""Progress: a tqdm bar (loss, tokens/s, ETA) on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, start: int, *, quiet: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.total, self.start_step, self.t0 = total, start, time.perf_counter()
        self.bar = None
        if not quiet and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, file=self.stream, unit="step", dynamic_ncols=True)

    def step(self, record: dict) -> None:
        """After each logged optimizer step."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.n = record["step"]
            extra = ({"margin": f"{record['rewards_margin']:.3f}", "acc": f"{record['rewards_accuracy']:.2f}"}
                     if "rewards_margin" in record else {})
            if "reward_mean" in record:
                extra = {"reward": f"{record['reward_mean']:.3f}", "len": f"{record['completion_length']:.0f}"}
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", **extra, tok_s=f"{record['tokens_per_s']:.0f}",
                                 refresh=False)
            self.bar.refresh()
            return
        done = record["step"] - self.start_step
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(done, 1) * (self.total - record["step"])
        self.say(f"step {record['step']}/{self.total}  epoch {record['epoch']:.2f}  loss {record['loss']:.4f}  "
                 + _preference(record) + _reward(record) + f"lr {record['lr']:.2e}  grad_norm {record['grad_norm']:.3f}  "
                 f"{record['tokens_per_s']:.0f} tok/s  eta {_fmt(eta)}" + _skipped(record))

    def say(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _preference(record: dict) -> str:
    """DPO: the reward margin and the share of pairs whose chosen reply wins."""
    if "rewards_margin" not in record:
        return ""
    return f"margin {record['rewards_margin']:.3f}  accuracy {record['rewards_accuracy']:.2f}  "


def _reward(record: dict) -> str:
    """GRPO: the mean reward of the step's replies (and its spread), their mean length, the KL."""
    if "reward_mean" not in record:
        return ""
    kl = f"kl {record['kl']:.4f}  " if "kl" in record else ""
    return (f"reward {record['reward_mean']:.3f} (std {record['reward_std']:.3f})  "
            f"reply {record['completion_length']:.1f} tok  {kl}")


def _skipped(record: dict) -> str:
    """fp16 loss scaling: say when this step was skipped for inf/nan gradients, and how many so far."""
    if not record.get("skipped_steps"):
        return ""
    return f"  {'step skipped (inf/nan gradients), ' if record['skipped'] else ''}{record['skipped_steps']} skipped"


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"
