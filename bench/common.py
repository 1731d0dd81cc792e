"""What both sides of the benchmark share, so they are measured the same way."""

from __future__ import annotations

import json

SMOL_TRAINING_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2's chat template with {% generation %} markers, for TRL's assistant_only_loss. It renders
the same text as the model's own template; bench/run.py checks that its masks equal tailor's."""


def marked_examples(tokenizer, path: str) -> list[tuple[list[int], list[int]]]:
    """(input_ids, assistant mask) per line, through transformers' own generation-marker masking."""
    tok_template = tokenizer.chat_template
    tokenizer.chat_template = SMOL_TRAINING_TEMPLATE
    out = []
    try:
        for line in open(path, encoding="utf-8"):
            enc = tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
            out.append((list(enc["input_ids"]), list(enc["assistant_masks"])))
    finally:
        tokenizer.chat_template = tok_template
    return out


def heldout_loss(model, tokenizer, path: str) -> float:
    """Mean cross-entropy over every assistant token of a JSONL file (token-weighted), one example
    at a time. Both tools' trained models are scored by this same function."""
    import torch

    total, count = 0.0, 0
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for ids, mask in marked_examples(tokenizer, path):
            x = torch.tensor([ids], device=device)
            logits = model(input_ids=x).logits[0, :-1].float()
            target = x[0, 1:]
            keep = torch.tensor(mask[1:], device=device).bool()
            ce = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum")
            total += float(ce)
            count += int(keep.sum())
    return total / count


def tailor_order(lengths: list[int], *, steps: int, batch_size: int, grad_accum: int, seed: int,
                 max_length: int) -> list[int]:
    """Example indices in the order tailor trains them (group batching: examples of similar length
    share a micro-batch), micro-batch after micro-batch, for `steps` optimizer steps. The TRL peer
    reads its dataset in this order with a sequential sampler, so both tools train the same
    examples in the same micro-batches and steps: an equal-loss check then compares like with like.
    The training file's size must be a multiple of batch_size x grad_accum (no short micro-batch)."""
    import numpy as np

    from tailor.train.batches import plan_epoch

    per_step = batch_size * grad_accum
    if len(lengths) % per_step:
        raise SystemExit(f"bench: {len(lengths)} training examples is not a multiple of {per_step}")
    order: list[int] = []
    epoch = 0
    while len(order) < steps * per_step:
        plan = plan_epoch(np.asarray(lengths), epoch, seed=seed, batch_size=batch_size, batch_tokens=None,
                          grad_accum=grad_accum, batching="group", max_length=max_length)
        order += [i for step in plan for micro in step for i in micro]
        epoch += 1
    return order[:steps * per_step]


def process_age() -> float:
    """Seconds since this process started (the OS's start time): 'time to first step' counts the
    interpreter start and every import, as a user waits for them."""
    import os
    import time

    try:  # Linux: start time in clock ticks since boot, against CLOCK_BOOTTIME. psutil's create_time
        # adds /proc/stat's whole-second boot time and so over-reports by up to a second.
        start_ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        import psutil

        return time.time() - psutil.Process().create_time()


def free_port() -> int:
    """A loopback port nothing listens on, for a server the bench starts."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_server(server, timeout: float) -> None:
    """SIGTERM (tailor serve finishes in-flight requests), then a kill after `timeout` seconds."""
    import signal
    import subprocess

    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.kill()


def pair_tokens(tokenizer, path: str) -> list[tuple[list[int], list[int], int]]:
    """Per preference pair (conversational prompt/chosen/rejected): the ids of prompt + chosen and
    of prompt + rejected, and where the completions start (the prompt's length with its
    generation prompt). Both tools' models are scored on these same tokens."""
    out = []
    for line in open(path, encoding="utf-8"):
        row = json.loads(line)
        start = len(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"])
        ids = [list(tokenizer.apply_chat_template(row["prompt"] + row[k], tokenize=True, return_dict=True)["input_ids"])
               for k in ("chosen", "rejected")]
        out.append((ids[0], ids[1], start))
    return out


def pair_logps(model, tokenizer, path: str) -> list[tuple[float, float]]:
    """(log p(chosen), log p(rejected)) per pair: each completion's summed token log-probabilities
    (its end-of-turn marker and the newline after it included, as TRL counts them), fp32."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for chosen, rejected, start in pair_tokens(tokenizer, path):
            sums = []
            for ids in (chosen, rejected):
                x = torch.tensor([ids], device=device)
                logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
                sums.append(float(logp[start - 1:].gather(1, x[0, start:, None]).sum()))
            out.append((sums[0], sums[1]))
    return out


def heldout_dpo_loss(policy: list[tuple[float, float]], reference: list[tuple[float, float]], beta: float) -> dict:
    """The sigmoid DPO loss and preference accuracy over held-out pairs, from both models' log-probs."""
    import math

    margins = [beta * ((pc - rc) - (pr - rr)) for (pc, pr), (rc, rr) in zip(policy, reference)]
    loss = sum(max(-m, 0.0) + math.log1p(math.exp(-abs(m))) for m in margins) / len(margins)  # softplus(-m)
    return {"val_dpo_loss": loss, "val_accuracy": sum(m > 0 for m in margins) / len(margins),
            "val_margin": sum(margins) / len(margins)}
