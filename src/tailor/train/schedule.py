"""Learning-rate schedule: linear warm-up, then cosine, linear or constant."""

from __future__ import annotations

import math


def warmup_steps(warmup: float, total: int) -> int:
    """--warmup below 1 is a fraction of the run, otherwise a step count."""
    return int(round(warmup * total)) if warmup < 1 else int(warmup)


def lr_factor(step: int, *, total: int, warmup: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return min_ratio + (1 - min_ratio) * shape


def make_scheduler(optimizer, cfg, total: int):
    import torch

    warm = warmup_steps(cfg.warmup, total)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total=total, warmup=warm, schedule=cfg.schedule,
                                       min_ratio=cfg.min_lr_ratio))
