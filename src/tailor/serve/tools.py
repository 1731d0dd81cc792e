"""Tools in chat requests: which ones the template is offered, the model's tool calls read back
from its reply into OpenAI's `tool_calls` (the format comes from the chat template text, see
data.toolcalls), and the grammar that forces a call.

`tool_choice` "none" offers no tools (the template renders none, the reply is plain text);
"auto" offers them and whatever calls the model writes come back. "required" and a named
function force a call: the reply is decoded under a grammar of the template's own tool-call
format whose arguments follow the function's `parameters` schema (infer.grammar): one call of a
named function, one or more of any offered function for "required" (one when
`parallel_tool_calls` is false). Unforced, `parallel_tool_calls: false` keeps a reply's first call.
"""

from __future__ import annotations

import json
import re
import uuid

from tailor.data.toolcalls import HERMES, MARKERS, detect_style, parse_tool_calls
from tailor.infer import schema as schemas
from tailor.infer.grammar import JSON_STYLE, GrammarError
from tailor.serve.errors import APIError

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # OpenAI's rule for function names


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



def finish_reason(body) -> str:
    """A reply with tool calls ends "tool_calls", but "stop" when tool_choice named the function:
    OpenAI's API does so (as vLLM notes in its chat serving), and clients check for it."""
    return "stop" if isinstance(body.tool_choice, dict) else "tool_calls"


def forced(body) -> bool:
    """Whether tool_choice forces a call ("required" or a named function)."""
    return body.tool_choice == "required" or isinstance(body.tool_choice, dict)


def forced_calls(body, served) -> str | None:
    """The grammar (llguidance's Lark) of the calls a request forces, in the model's own format;
    None when nothing is forced. 400 when the template's format is unknown or a schema is bad."""
    if not forced(body):
        return None
    if not body.tools:
        raise APIError(400, 'tool_choice "required" needs `tools`.', param="tool_choice")
    style = reply_style(body, served)
    if style is None:
        raise APIError(400, "This model's chat template writes tool calls in no format tailor knows (hermes "
                            "<tool_call> blocks or Llama 3 JSON), so a tool call cannot be forced; use "
                            'tool_choice "auto".', param="tool_choice")
    wanted = body.tool_choice["function"]["name"] if isinstance(body.tool_choice, dict) else None
    calls = [_call_rule(i, t, style, served.tokenizer) for i, t in enumerate(body.tools)
             if wanted is None or (t.get("function") or {}).get("name") == wanted]
    sep = '"\\n"' if style == HERMES else '"; "'
    one = body.parallel_tool_calls is False or wanted is not None  # a named function: one call, as vLLM does
    start = "start: call" if one else f"start: call ({sep} call)*"
    return "\n".join([start, "call: " + " | ".join(f"call{i}" for i in range(len(calls))),
                      *(f"call{i}: {text}" for i, text in enumerate(calls))])


def _call_rule(i: int, tool: dict, style: str, tokenizer) -> str:
    """One function's call: the format's markers around {"name": ..., "arguments": <schema>}."""
    fn = tool.get("function") if isinstance(tool, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or not _NAME.match(name):
        raise APIError(400, f"tools[{i}].function.name must be 1 to 64 letters, digits, _ or -.",
                       param=f"tools[{i}].function.name")
    params = fn.get("parameters") or {"type": "object", "properties": {}, "additionalProperties": False}
    try:
        schemas.check(params, strict=bool(fn.get("strict")))
    except GrammarError as exc:
        where = f"tools[{i}].function.parameters"
        raise APIError(400, f"{where}: {exc}", param=f"{where}.{exc.path}" if exc.path else where) from exc
    key = "arguments" if style == HERMES else "parameters"
    # each %json is a document of its own, so the parameters' "#/$defs/..." refs still resolve
    head = json.dumps('{"name": "%s", "%s": ' % (name, key))  # a lark string; the name is [a-zA-Z0-9_-]
    body = f'{head} %json {json.dumps({**params, "x-guidance": JSON_STYLE})} "}}"'
    if style != HERMES:
        return body
    open_, close = (_marker(tokenizer, m) for m in MARKERS[HERMES])
    return f'{open_} "\\n" {body} "\\n" {close}'


def _marker(tokenizer, text: str) -> str:
    """A format marker in the grammar: a special token by id (it has no text to match), else a string."""
    special = {t.content: i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return f"<[{special[text]}]>" if text in special else json.dumps(text)
