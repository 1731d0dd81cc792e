"""TensorBoard: event files under OUT/tensorboard/ (no account, nothing leaves the machine).
`tensorboard --logdir OUT/tensorboard` shows them."""

from __future__ import annotations

import yaml


class _TensorBoard:
    def __init__(self, writer):
        self.writer = writer

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a run that dies keeps what it logged

    def finish(self, final: str | None) -> None:
        if final is not None:
            self.writer.add_text("final_model", final)
        self.writer.close()


def start(ctx) -> _TensorBoard:
    from torch.utils.tensorboard import SummaryWriter

    # A resumed run continues the same event files; what the interrupted run logged after its
    # checkpoint is dropped (purge_step), as metrics.jsonl drops it.
    purge = None if ctx.resumed_step is None else ctx.resumed_step + 1
    writer = SummaryWriter(log_dir=str(ctx.out / "tensorboard"), purge_step=purge)
    if ctx.resumed_step is None:
        writer.add_text("config", "```yaml\n" + yaml.safe_dump(ctx.config, sort_keys=False) + "```")
    ctx.state = {"log_dir": "tensorboard"}
    return _TensorBoard(writer)
