"""Weights & Biases, with the Hugging Face Trainer's environment variables: WANDB_PROJECT,
WANDB_ENTITY, WANDB_MODE (offline writes OUT/wandb/offline-run-* for `wandb sync`), WANDB_DIR,
WANDB_API_KEY (or `wandb login`). `train/global_step` is every metric's x axis, as in the
Trainer, so a resumed run may log a step again."""

from __future__ import annotations

import os
from pathlib import Path

STEP = "train/global_step"


def setting_problem() -> str | None:
    """Online W&B needs a key; offline and disabled modes need nothing."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return None
    if os.environ.get("WANDB_API_KEY"):
        return None
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:  # `wandb login` writes the key to ~/.netrc
        if host in Path(os.environ.get("NETRC") or Path.home() / ".netrc").read_text():
            return None
    except OSError:
        pass
    return ("no API key: set WANDB_API_KEY (or run `wandb login`), or WANDB_MODE=offline to write the run "
            "locally and `wandb sync` it later")


class _WandB:
    def __init__(self, run):
        self.run = run

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log({**values, STEP: step})

    def finish(self, final: str | None) -> None:
        if final is not None:
            self.run.summary["final_model"] = final
        self.run.finish(exit_code=0 if final is not None else 1)


def start(ctx) -> _WandB:
    import wandb

    folder = Path(os.environ.get("WANDB_DIR") or ctx.out)
    folder.mkdir(parents=True, exist_ok=True)
    saved = ctx.state.get("id")  # a resumed tailor run continues its W&B run
    run = wandb.init(project=ctx.project, entity=ctx.entity or os.environ.get("WANDB_ENTITY"), name=ctx.run_name,
                     id=saved, resume="allow" if saved else None, dir=str(folder), config=ctx.config,
                     tags=ctx.tags or None)
    run.define_metric(STEP)
    run.define_metric("*", step_metric=STEP, step_sync=True)
    ctx.state = {"id": run.id, "project": ctx.project}
    return _WandB(run)
