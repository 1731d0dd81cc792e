"""One parsed JSON line of each format -> a Conversation, every problem collected on the way.

OpenAI chat is validated field by field (roles, content, weights, tool calls and the tool
results that answer them); prompt/completion, Alpaca and ShareGPT become the same chat shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tailor.data.problems import Problems

ROLES = ("system", "developer", "user", "assistant", "tool")
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call", "refusal"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}


@dataclass
class Message:
    role: str
    content: str
    train: bool = False
    """True for an assistant message the model learns from (weight 1)."""
    extra: dict = field(default_factory=dict)
    """name, tool_calls, tool_call_id: passed to the chat template as they are."""

    def template_dict(self) -> dict:
        return {"role": self.role, "content": self.content, **self.extra}


@dataclass
class Conversation:
    messages: list[Message]
    line: int
    """1-based line in the JSONL file."""
    tools: list | None = None

    def template_messages(self) -> list[dict]:
        return [m.template_dict() for m in self.messages]


def type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------------
# OpenAI chat


def messages_list(obj: dict, line: int, problems: Problems, fix: str) -> list | None:
    """obj's "messages" when it is a non-empty list; else an error naming what it is, and None."""
    messages = obj.get("messages")
    if isinstance(messages, list) and messages:
        return messages
    what = "missing" if messages is None else (
        "empty" if isinstance(messages, list) else f"a {type_name(messages)}, not a list")
    problems.error(line, "messages", "missing_messages_list", f"messages is {what}", fix)
    return None


def from_chat(obj: dict, line: int, problems: Problems) -> Conversation | None:
    messages = messages_list(obj, line, problems,
                             'give "messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]')
    if messages is None:
        return None
    for key in obj:
        if key not in ("messages", "tools", "parallel_tool_calls", "functions"):
            problems.warning(line, key, "unrecognized_key", f"unknown top-level key {key!r} (ignored)",
                             "remove it, or keep it knowing it is not used")
    return chat_conversation(messages, obj.get("tools"), line, problems)


def chat_conversation(messages: list, tools: Any, line: int, problems: Problems, *,
                      training: bool = True) -> Conversation | None:
    """OpenAI chat `messages` and `tools` -> the messages the chat template sees, every problem
    reported with its field path (messages[2].tool_calls[0].function.arguments). Training data
    and the server's requests both come through here, so a request renders exactly as the same
    conversation did in training. training=False (a request to answer): no assistant reply is
    needed, and content may be empty or null."""
    before = problems.error_count
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        problems.error(line, "tools", "wrong_type", f"tools is a {type_name(tools)}, not a list of objects",
                       'give "tools": [{"type": "function", "function": {...}}]')
        tools = None
    out = [m for i, raw in enumerate(messages)
           if (m := _chat_message(raw, f"messages[{i}]", line, problems, training))]
    if problems.error_count > before:
        return None
    conv = Conversation(out, line, tools or None)
    if training and not _check_replies(conv, line, problems):
        return None
    _check_tool_results(conv, line, problems)
    return conv if problems.error_count == before else None


def _chat_message(raw: Any, path: str, line: int, problems: Problems, training: bool = True) -> Message | None:
    if not isinstance(raw, dict):
        problems.error(line, path, "wrong_type", f"the message is a {type_name(raw)}, not an object",
                       '{"role": ..., "content": ...}')
        return None
    ok = True
    for key in raw:
        if key not in MESSAGE_KEYS:
            problems.error(line, f"{path}.{key}", "message_unrecognized_key", f"unknown message key {key!r}",
                           f"remove it; message keys are {', '.join(sorted(MESSAGE_KEYS))}")
            ok = False
    role = raw.get("role")
    if "role" not in raw:
        problems.error(line, f"{path}.role", "message_missing_key", "the message has no role",
                       f"add \"role\": one of {', '.join(ROLES)}")
        return None
    if role not in ROLES:
        problems.error(line, f"{path}.role", "unrecognized_role", f"unknown role {role!r}",
                       f"use one of {', '.join(ROLES)}")
        return None
    content = _content_text(raw, path, line, problems, training)
    extra = {k: raw[k] for k in ("name", "tool_call_id") if raw.get(k) is not None}
    for k in extra:
        if not isinstance(extra[k], str):
            problems.error(line, f"{path}.{k}", "wrong_type", f"{k} is a {type_name(extra[k])}, not a string",
                           f"make {k} a string")
            ok = False
    if role == "assistant" and raw.get("tool_calls") is not None:
        calls = _tool_calls(raw["tool_calls"], f"{path}.tool_calls", line, problems)
        ok = ok and calls is not None
        extra["tool_calls"] = calls
    elif raw.get("tool_calls") is not None:
        problems.error(line, f"{path}.tool_calls", "wrong_type", f"a {role} message cannot carry tool_calls",
                       "move tool_calls to an assistant message")
        ok = False
    train = _weight(raw, role, path, line, problems)
    if content is None and not extra.get("tool_calls") and (training or raw.get("content") is not None):
        if "content" not in raw:
            problems.error(line, f"{path}.content", "message_missing_key", "the message has no content",
                           'add "content": "..."')
        return None
    if not ok or train is None:
        return None
    return Message(role, content or "", train, extra)


def _content_text(raw: dict, path: str, line: int, problems: Problems, training: bool = True) -> str | None:
    """The message text: a string, or a list of text parts joined. None when absent or invalid."""
    content = raw.get("content")
    if content is None:
        return None
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                problems.error(line, f"{path}.content[{j}]", "wrong_type",
                               "a content part must be {\"type\": \"text\", \"text\": \"...\"}",
                               "use text parts only (images are not supported for fine-tuning here)")
                return None
        content = "".join(texts)
    if not isinstance(content, str):
        problems.error(line, f"{path}.content", "wrong_type", f"content is a {type_name(content)}, not a string",
                       "make content a string (or a list of text parts)")
        return None
    if training and not content.strip() and not raw.get("tool_calls"):
        problems.error(line, f"{path}.content", "missing_content", "content is empty",
                       "write the message text, or remove the message")
        return None
    return content


def _weight(raw: dict, role: str, path: str, line: int, problems: Problems) -> bool | None:
    """Whether the message is trained on; None after reporting an invalid weight."""
    if "weight" not in raw:
        return role == "assistant"
    weight = raw["weight"]
    if role != "assistant":
        problems.error(line, f"{path}.weight", "invalid_weight", "weight is only allowed on assistant messages",
                       f"remove weight from this {role} message")
        return None
    if isinstance(weight, bool) or weight not in (0, 1):
        problems.error(line, f"{path}.weight", "invalid_weight", f"weight is {weight!r}; it must be 0 or 1",
                       "use 1 to train on this message, 0 to keep it as context only")
        return None
    return weight == 1


def _tool_calls(calls: Any, path: str, line: int, problems: Problems) -> list | None:
    if not isinstance(calls, list) or not calls:
        problems.error(line, path, "wrong_type", "tool_calls must be a non-empty list",
                       'give [{"id": ..., "type": "function", "function": {"name": ..., "arguments": "{...}"}}]')
        return None
    out = []
    for j, call in enumerate(calls):
        where = f"{path}[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn.get("name"):
            problems.error(line, f"{where}.function", "invalid_tool_call", "the call has no function name",
                           'give "function": {"name": "...", "arguments": "{...}"}')
            return None
        args = fn.get("arguments", "{}")
        if not isinstance(args, str):
            problems.error(line, f"{where}.function.arguments", "invalid_tool_call",
                           f"arguments is a {type_name(args)}; OpenAI's format wants a JSON string",
                           "encode the arguments object as a string: \"{\\\"city\\\": \\\"Paris\\\"}\"")
            return None
        try:
            parsed_args = json.loads(args)
        except json.JSONDecodeError as exc:
            problems.error(line, f"{where}.function.arguments", "invalid_tool_call",
                           f"arguments is not valid JSON (column {exc.colno}: {exc.msg})", "fix the JSON string")
            return None
        # Chat templates expect arguments as an object (they apply tojson themselves).
        entry = {"id": call.get("id"), "type": call.get("type", "function"),
                 "function": {"name": fn["name"], "arguments": parsed_args}}
        out.append({k: v for k, v in entry.items() if v is not None})
    return out


def _tool_call_ids(messages: list[Message]) -> set:
    return {c.get("id") for m in messages for c in m.extra.get("tool_calls") or () if c.get("id")}


def _check_replies(conv: Conversation, line: int, problems: Problems) -> bool:
    """Training needs something to learn: an assistant message, at least one with weight 1.
    False when there is no assistant message at all (nothing else is worth checking then)."""
    assistants = [m for m in conv.messages if m.role == "assistant"]
    if not assistants:
        problems.error(line, "messages", "example_missing_assistant_message", "no assistant message",
                       "add the assistant reply the model should learn")
        return False
    if not any(m.train for m in assistants):
        problems.error(line, "messages", "nothing_to_train", "every assistant message has weight 0: nothing to learn",
                       "set weight 1 on at least one assistant message")
    return True


def _check_tool_results(conv: Conversation, line: int, problems: Problems) -> None:
    """Every tool result answers an earlier call (by tool_call_id when it gives one)."""
    tool_ids = _tool_call_ids(conv.messages)
    called = False
    for i, m in enumerate(conv.messages):
        if m.role == "assistant" and m.extra.get("tool_calls"):
            called = True
        if m.role == "tool":
            ref = m.extra.get("tool_call_id")
            if not called or (ref is not None and ref not in tool_ids):
                what = f"tool_call_id {ref!r} matches no earlier tool call" if called else "no earlier tool call"
                problems.error(line, f"messages[{i}]", "tool_without_call", f"tool message with {what}",
                               "put an assistant message with the matching tool_calls before it")


# ---------------------------------------------------------------------------------------------
# The other formats become chat


def _string_field(obj: dict, key: str, line: int, problems: Problems, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            problems.error(line, key, "message_missing_key", f"{key} is missing", f'add "{key}": "..."')
        return None
    if not isinstance(value, str):
        problems.error(line, key, "wrong_type", f"{key} is a {type_name(value)}, not a string",
                       f"make {key} a string")
        return None
    return value


def from_prompt_completion(obj: dict, line: int, problems: Problems) -> Conversation | None:
    before = problems.error_count
    prompt = _string_field(obj, "prompt", line, problems)
    completion = _string_field(obj, "completion", line, problems)
    if completion is not None and not completion.strip():
        problems.error(line, "completion", "missing_content", "completion is empty", "write the completion")
    if problems.error_count > before:
        return None
    return Conversation([Message("user", prompt), Message("assistant", completion, True)], line)


def from_alpaca(obj: dict, line: int, problems: Problems) -> Conversation | None:
    before = problems.error_count
    instruction = _string_field(obj, "instruction", line, problems)
    extra_input = _string_field(obj, "input", line, problems, required=False)
    output = _string_field(obj, "output", line, problems)
    system = _string_field(obj, "system", line, problems, required=False)
    if output is not None and not output.strip():
        problems.error(line, "output", "missing_content", "output is empty", "write the expected output")
    if instruction is not None and not instruction.strip():
        problems.error(line, "instruction", "missing_content", "instruction is empty", "write the instruction")
    if problems.error_count > before:
        return None
    user = instruction + (f"\n\n{extra_input}" if extra_input and extra_input.strip() else "")
    messages = ([Message("system", system)] if system and system.strip() else [])
    return Conversation(messages + [Message("user", user), Message("assistant", output, True)], line)


def from_sharegpt(obj: dict, line: int, problems: Problems) -> Conversation | None:
    before = problems.error_count
    turns = obj.get("conversations")
    if not isinstance(turns, list) or not turns:
        problems.error(line, "conversations", "missing_messages_list", "conversations is missing, empty or not a list",
                       'give "conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]')
        return None
    messages = []
    for i, turn in enumerate(turns):
        path = f"conversations[{i}]"
        if not isinstance(turn, dict):
            problems.error(line, path, "wrong_type", f"the turn is a {type_name(turn)}, not an object",
                           '{"from": "human", "value": "..."}')
            continue
        role = SHAREGPT_ROLES.get(turn.get("from"))
        if role is None:
            problems.error(line, f"{path}.from", "unrecognized_role", f"unknown speaker {turn.get('from')!r}",
                           "use human, gpt or system")
            continue
        value = turn.get("value")
        if not isinstance(value, str) or not value.strip():
            kind = "missing_content" if value is None or isinstance(value, str) else "wrong_type"
            problems.error(line, f"{path}.value", kind, "value is missing, empty or not a string", "write the text")
            continue
        messages.append(Message(role, value, role == "assistant"))
    if problems.error_count > before:
        return None
    conv = Conversation(messages, line)
    _check_replies(conv, line, problems)
    return conv if problems.error_count == before else None


CONVERTERS = {"chat": from_chat, "prompt_completion": from_prompt_completion, "alpaca": from_alpaca,
              "sharegpt": from_sharegpt}

