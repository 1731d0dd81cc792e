"""Tool calls in a model's reply: which format the chat template teaches, and the reply's text
parsed into OpenAI's tool calls. Pure functions on text: the server decides when to use them.

Two formats are understood, the ones the templates of most open tool-calling models write:
- "hermes": `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one block per call, text
  allowed around them (Qwen2/2.5/3, Hermes 2/3, SmolLM3 and other chatml tool templates);
- "llama3_json": the whole reply is `{"name": ..., "parameters": {...}}` (several joined by `;`),
  optionally after `<|python_tag|>` (Llama 3.1/3.2/3.3 JSON tool calling).
A reply that does not parse as calls in full stays plain text: a half-understood call is worse
than none to a client that would then run it.
"""

from __future__ import annotations

import json
import re

HERMES = "hermes"
LLAMA3_JSON = "llama3_json"
MARKERS = {HERMES: ("<tool_call>", "</tool_call>"), LLAMA3_JSON: ("<|python_tag|>",)}
"""Markers of each format that tokenizers may hold as special tokens (dropped by a plain decode)."""

_HERMES_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)
_PYTHON_TAG = "<|python_tag|>"


def detect_style(chat_template: str | None) -> str | None:
    """The tool-call format the template writes for an assistant's tool_calls, or None."""
    if not chat_template:
        return None
    if "<tool_call>" in chat_template:
        return HERMES
    # Llama 3.1's template writes '{"name": "' + name + '", "parameters": ' + arguments | tojson.
    if _PYTHON_TAG in chat_template or ('"parameters"' in chat_template and "<|start_header_id|>" in chat_template):
        return LLAMA3_JSON
    return None


def parse_tool_calls(text: str, style: str) -> tuple[str | None, list[dict]]:
    """(content, calls): each call {"name", "arguments" as a JSON string}; content is the text
    outside the calls (None when there is none). Without valid calls: (text, [])."""
    parsed = _hermes(text) if style == HERMES else _llama3(text)
    return parsed if parsed is not None else (text, [])


def _hermes(text: str) -> tuple[str | None, list[dict]] | None:
    calls, outside, pos = [], [], 0
    for block in _HERMES_BLOCK.finditer(text):
        call = _call(block.group(1).strip(), "arguments")
        if call is None:
            return None
        calls.append(call)
        outside.append(text[pos:block.start()])
        pos = block.end()
    if not calls:
        return None
    content = "".join(outside + [text[pos:]]).strip()
    return content or None, calls


def _llama3(text: str) -> tuple[str | None, list[dict]] | None:
    body = text.strip()
    if body.startswith(_PYTHON_TAG):
        body = body[len(_PYTHON_TAG):].lstrip()
    decoder, calls, pos = json.JSONDecoder(), [], 0
    while pos < len(body):
        try:
            obj, pos = decoder.raw_decode(body, pos)
        except ValueError:
            return None
        call = _call_object(obj, "parameters")
        if call is None:
            return None
        calls.append(call)
        while pos < len(body) and (body[pos].isspace() or body[pos] == ";"):
            pos += 1
    return (None, calls) if calls else None


def _call(body: str, key: str) -> dict | None:
    try:
        return _call_object(json.loads(body), key)
    except ValueError:
        return None


def _call_object(obj, key: str) -> dict | None:
    """{"name", "arguments"} from one call object whose arguments sit under `key` (or the
    other usual key); None when it is not a call."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    other = "arguments" if key == "parameters" else "parameters"
    args = obj.get(key, obj.get(other, {}))
    if isinstance(args, str):  # some models write the arguments already encoded
        try:
            json.loads(args)
        except ValueError:
            return None
        return {"name": obj["name"], "arguments": args}
    if not isinstance(args, dict):
        return None
    return {"name": obj["name"], "arguments": json.dumps(args, ensure_ascii=False)}
