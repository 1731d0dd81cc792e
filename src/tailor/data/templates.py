"""Chat templates: the model's own, or a named fallback for base models that have none,
and the token ids that end an assistant turn.

Training and serving both go through here, so a fine-tune is served with the very template
and end-of-turn tokens it was trained with (they are saved into the output folder's tokenizer
and generation_config).
"""

from __future__ import annotations

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

NAMED_TEMPLATES = {"chatml": CHATML}


def ensure_chat_template(tokenizer, choice: str | None = None) -> str | None:
    """Give `tokenizer` a chat template if it lacks one (or `choice` overrides it).

    Returns a warning to show the user, or None.
    """
    if choice:
        tokenizer.chat_template = NAMED_TEMPLATES[choice]
        return None
    if getattr(tokenizer, "chat_template", None):
        return None
    tokenizer.chat_template = CHATML
    return "the model has no chat template; using chatml (pick another with --chat-template)"


def render_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of `messages` followed by the assistant's turn opening, ready to generate."""
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=False))


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Ids that end generation: the generation config's EOS (int or list), the tokenizer's EOS,
    and the template's end-of-turn token when it is a single token."""
    ids: list[int] = []
    eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    for value in (eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.append(value)
        elif isinstance(value, (list, tuple)):
            ids.extend(int(v) for v in value)
    for marker in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and marker in (tokenizer.chat_template or ""):
            ids.append(tid)
    return sorted(set(ids))
