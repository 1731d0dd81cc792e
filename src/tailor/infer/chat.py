"""Text in, text out for one conversation: render with the chat template, generate, detokenise."""

from __future__ import annotations

from collections.abc import Iterator

from tailor.data.templates import render_prompt
from tailor.errors import TailorError
from tailor.infer.detok import partial_suffix as _partial_suffix  # noqa: F401  (kept for callers)
from tailor.infer.sampling import SamplingParams


def stream_reply(loaded, messages: list[dict], params: SamplingParams) -> Iterator[str]:
    """Yield the assistant's reply to `messages` as text pieces. `loaded` is an
    infer.loading.Loaded; its stop ids apply unless `params` names its own."""
    if not params.stop_token_ids:
        params.stop_token_ids = list(loaded.stop_ids)
    prompt = render_prompt(loaded.tokenizer, messages)
    limit = loaded.engine.max_len
    if len(prompt) >= limit:
        raise TailorError(f"The conversation is {len(prompt)} tokens long; this model's context is {limit}. "
                          "Start a new one (/reset in chat) or shorten the message.")
    for event in loaded.engine.generate(prompt, params, loaded.adapter):
        if event.text:
            yield event.text
        if event.error:
            raise RuntimeError(event.error)
