"""Text in, text out for one conversation: render with the chat template, generate, detokenise."""

from __future__ import annotations

from collections.abc import Iterator

from tailor.data.templates import render_prompt, stop_token_ids
from tailor.infer.detok import StreamDecoder
from tailor.infer.engine import generate_ids
from tailor.infer.sampling import SamplingParams


def stream_reply(model, tokenizer, messages: list[dict], params: SamplingParams) -> Iterator[str]:
    """Yield the assistant's reply to `messages` as text pieces."""
    if not params.stop_token_ids:
        params.stop_token_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    decoder = StreamDecoder(tokenizer)
    held = ""  # text withheld because it might be the start of a stop string
    for token in generate_ids(model, render_prompt(tokenizer, messages), params):
        held += decoder.push(token)
        cut = min((held.find(s) for s in params.stop if s in held), default=-1)
        if cut >= 0:
            yield held[:cut]
            return
        keep = max((_partial_suffix(held, s) for s in params.stop), default=0)
        if len(held) > keep:
            yield held[: len(held) - keep]
            held = held[len(held) - keep:]
    if held:
        yield held


def _partial_suffix(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-n:]):
            return n
    return 0
