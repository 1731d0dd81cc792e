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
