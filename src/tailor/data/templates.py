"""Chat templates: the model's own, or a named fallback for base models that have none,
and the token ids that end an assistant turn.

Training and serving both go through here, so a fine-tune is served with the very template
and end-of-turn tokens it was trained with (they are saved into the output folder's tokenizer
and generation_config).
"""

from __future__ import annotations

from pathlib import Path

from tailor.errors import TailorError, UsageError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama 3's layout (headers, <|eot_id|> after every turn), without 3.1's dated system prompt.
LLAMA3 = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Stanford Alpaca's prompt layout; each response ends with the tokenizer's EOS so the model learns to stop.
ALPACA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
)

NAMED_TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "alpaca": ALPACA}
# The markers each named template writes; a tokenizer lacking one gets it as a special token,
# so it is one id the model can learn to emit (and the server can stop on).
TEMPLATE_TOKENS = {"chatml": ["<|im_start|>", "<|im_end|>"],
                   "llama3": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                   "alpaca": []}
KNOWN_END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")
_PROBE = "Tailor-probe-reply-7f3a"


def _load_template(choice: str) -> tuple[str, list[str]]:
    if choice in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[choice], TEMPLATE_TOKENS[choice]
    if "{{" in choice or "{%" in choice:  # the Jinja text itself (how the service's tenants give one): never a path
        return choice, []
    path = Path(choice).expanduser()
    if path.suffix != ".jinja" and not path.is_file():
        raise UsageError(f"--chat-template {choice!r}: use chatml, llama3, alpaca, or a path to a .jinja file.")
    try:
        return path.read_text(encoding="utf-8"), []
    except OSError as exc:
        raise UsageError(f"--chat-template {choice}: cannot read the file ({exc.strerror}).") from exc


def ensure_chat_template(tokenizer, choice: str | None = None) -> str | None:
    """Give `tokenizer` a chat template if it lacks one (or `choice` overrides it).

    choice: None | "chatml" | "llama3" | "alpaca" | Jinja text | path to a .jinja file. Markers the template
    needs that are not tokens yet are added as special tokens (then len(tokenizer) grows and the
    model's embeddings must be resized). Returns a warning to show the user, or None.
    """
    notes = []
    if not choice and getattr(tokenizer, "chat_template", None):
        return None
    if not choice:
        choice = "chatml"
        notes.append("the model has no chat template; using chatml (pick another with --chat-template)")
    template, markers = _load_template(choice)
    tokenizer.chat_template = template
    if tokenizer.eos_token is None:
        markers = markers + ["<|endoftext|>"]
    if not markers:
        end = end_of_turn_text(tokenizer)
        markers = [end] if end and end.startswith("<") and end.endswith(">") else []
    added = add_special_tokens(tokenizer, markers)
    if tokenizer.eos_token is None:
        tokenizer.eos_token = "<|endoftext|>"
    if added:
        notes.append(f"added special token(s) {', '.join(added)} to the tokenizer for the {choice} template "
                     "(the model's embeddings are resized to match)")
    return "; ".join(notes) or None


def add_special_tokens(tokenizer, tokens: list[str]) -> list[str]:
    """Add the tokens the vocabulary lacks, as special tokens; return the ones added."""
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    missing = [t for t in dict.fromkeys(tokens) if t not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    return missing


def render_prompt(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """Token ids of `messages` followed by the assistant's turn opening, ready to generate. `tools`
    (OpenAI function definitions) reach the template as training's renderer passes them."""
    return list(tokenizer.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True,
                                              tokenize=True, return_dict=False))


def end_of_turn_text(tokenizer) -> str | None:
    """What the chat template writes right after an assistant reply (e.g. "<|im_end|>"), found by
    rendering a probe conversation; None when the template writes nothing there or fails."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template that rejects even this minimal chat gives no probe; not fatal here
        return None
    at = text.rfind(_PROBE)
    if at < 0:
        return None
    tail = text[at + len(_PROBE):].strip()
    return tail.split()[0] if tail else None


def _single_id(tokenizer, text: str) -> int | None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


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
    template = tokenizer.chat_template or ""
    vocab = None
    for marker in KNOWN_END_MARKERS[:4]:
        if marker in template:
            vocab = vocab if vocab is not None else tokenizer.get_vocab()
            if marker in vocab:
                ids.append(vocab[marker])
    end = end_of_turn_text(tokenizer)
    if end:
        tid = _single_id(tokenizer, end)
        if tid is not None:
            ids.append(tid)
    return sorted(set(ids))


def check_template(tokenizer) -> None:
    """Raise a TailorError when the tokenizer has no usable chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise TailorError("The tokenizer has no chat template; pass --chat-template chatml|llama3|alpaca|FILE.jinja.")
