"""Tools in chat requests: which ones the template is offered, and the model's tool calls read
back from its reply into OpenAI's `tool_calls` (the format comes from the chat template text,
see data.toolcalls).

`tool_choice` "none" offers no tools (the template renders none, the reply is plain text);
"auto", "required" and a named function are hints: the tools are offered and whatever calls
the model writes come back, but nothing forces it to call one. `parallel_tool_calls: false`
keeps only the first call of a reply.
"""

from __future__ import annotations

import uuid

from tailor.data.toolcalls import MARKERS, detect_style, parse_tool_calls
from tailor.serve.errors import APIError


def offered(body) -> list[dict] | None:
    """The tools the chat template is given."""
    return None if body.tool_choice == "none" else (body.tools or None)


def check_tool_choice(body) -> None:
    """A named tool_choice must name an offered function, as OpenAI's API requires."""
    choice = body.tool_choice
    if not isinstance(choice, dict):
        return
    fn = choice.get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    if choice.get("type") != "function" or not isinstance(name, str):
        raise APIError(400, 'tool_choice must be "none", "auto", "required" or '
                            '{"type": "function", "function": {"name": ...}}.', param="tool_choice")
    names = {(t.get("function") or {}).get("name") for t in body.tools or () if isinstance(t, dict)}
    if name not in names:
        raise APIError(400, f"tool_choice names function {name!r}, which is not among the request's tools.",
                       param="tool_choice")


def reply_style(body, served) -> str | None:
    """The tool-call format to read replies in: set when tools are offered and the model's
    template writes tool calls in a format tailor parses."""
    if not offered(body):
        return None
    return detect_style(getattr(served.tokenizer, "chat_template", None))


def reply_text(tokenizer, events, style: str, stops: list[str]) -> str:
    """The reply's text with the format's markers kept: the engine's text drops special tokens,
    and some tokenizers hold `<tool_call>` or `<|python_tag|>` as one. Cut at a stop string as
    the engine's text is."""
    keep = set(MARKERS[style])
    hidden = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special and t.content not in keep}
    hidden |= {i for i, t in zip(tokenizer.all_special_ids, tokenizer.all_special_tokens) if t not in keep}
    ids = [e.token for e in events if e.token is not None and not e.stop_token and e.token not in hidden]
    text = tokenizer.decode(ids, skip_special_tokens=False)
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return text[:cut] if cut >= 0 else text


def read_reply(body, served, events, style: str) -> tuple[str | None, list[dict]]:
    """(content, tool_calls in OpenAI's shape) of one choice's events; no calls -> (text, [])."""
    content, calls = parse_tool_calls(reply_text(served.tokenizer, events, style, body.stops()), style)
    if body.parallel_tool_calls is False:
        calls = calls[:1]
    return content, [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": call}
                     for call in calls]
