"""Validation: loss and token accuracy streamed batch by batch, and a few sample answers."""

from __future__ import annotations

import torch

from tailor.train.batches import collate
from tailor.train.loss import batch_loss, decoder_parts


@torch.no_grad()
def validation_loss(model, examples, cfg, prec, pad_id: int) -> dict:
    """Mean loss and accuracy over every trained token of `examples`; only sums are kept."""
    if not examples:
        return {}
    body, head = decoder_parts(model, fused=cfg.fused)
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    total, correct, count = 0.0, 0, 0
    try:
        for s in range(0, len(order), cfg.batch_size):
            batch = collate(examples, order[s:s + cfg.batch_size], batching=cfg.batching,
                            max_length=cfg.max_length, pad_id=pad_id)
            with prec.autocast():
                loss_sum, hits = batch_loss(body, head, batch, prec.compute)
            total += float(loss_sum)
            correct += int(hits)
            count += batch.trained
    finally:
        model.train(was_training)
    return {"val_loss": total / max(count, 1), "val_accuracy": correct / max(count, 1), "val_tokens": count}


@torch.no_grad()
def sample_answers(model, tokenizer, samples, prec, max_tokens: int) -> list[dict]:
    """Greedy answers to the validation prompts, beside their reference answers. They come from
    the engine's forward in the compute dtype when it covers the model (train.generate), so
    they are what `tailor serve` will answer."""
    from tailor.train.generate import greedy_replies

    was_training = model.training
    model.eval()
    try:
        with prec.autocast():
            answers = greedy_replies(model, tokenizer, [messages for messages, _ in samples],
                                     max_new_tokens=max_tokens)
    finally:
        model.train(was_training)
    return [{"prompt": messages[-1]["content"], "reference": reference, "answer": answer.strip()}
            for (messages, reference), answer in zip(samples, answers)]
