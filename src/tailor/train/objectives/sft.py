"""Supervised fine-tuning (and raw-text continued pretraining, whose every token is trained):
cross-entropy over the trained tokens, each step's sum divided by the step's trained-token
count, so grad-accum 4 x batch 1 gives the very gradient of batch 4."""

from __future__ import annotations

from tailor.train.batches import collate, step_trained
from tailor.train.loss import batch_loss
from tailor.train.objectives import Work


class SFT:
    name = "sft"
    sums = ("loss", "tokens")

    def __init__(self, session):
        self.cfg, self.precision, self.pad_id = session.cfg, session.precision, session.pad_id
        self.items, self.val = session.data.train, session.data.val
        self.lengths = session.data.lengths

    def begin(self, step) -> Work:
        return Work(step, {"trained": step_trained(self.items, step)})

    def loss(self, body, head, micro, work: Work):
        c = self.cfg
        batch = collate(self.items, micro, batching=c.batching, max_length=c.max_length, pad_id=self.pad_id)
        token_losses, _ = batch_loss(body, head, batch, self.precision.compute, accuracy=False)
        return token_losses / work.norm["trained"], {"loss": token_losses.item(), "tokens": batch.tokens}

    def record(self, sums, work: Work) -> dict:
        n = work.norm["trained"]
        return {"loss": sums["loss"] / max(n, 1), "trained_tokens": n}

    def validate(self, model) -> dict:
        from tailor.train.evaluate import validation_loss

        return validation_loss(model, self.val, self.cfg, self.precision, self.pad_id)
