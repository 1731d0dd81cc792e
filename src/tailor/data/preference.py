"""Preference pairs (for DPO) and raw text (for continued pretraining): one parsed JSON line of
each of their formats -> one internal type, every problem collected on the way.

Preference formats (one per file):
  OpenAI DPO   {"input": {"messages": [...], "tools": [...]},
                "preferred_output": [{"role": "assistant", ...}], "non_preferred_output": [...]}
               (the older names preferred_completion / non_preferred_completion are read too)
  TRL          {"prompt": ..., "chosen": ..., "rejected": ...}, each a string or a message list; a
               string prompt is one user message and a string completion one assistant reply, so
               both forms render with the chat template, as tailor renders prompt/completion data.
               Without "prompt", chosen and rejected are whole conversations that share a prefix
               (TRL's implicit prompt): the shared messages are the prompt.
Raw text:      {"text": "..."}: every token is trained (other keys are ignored).

Each completion is one assistant message: the tokens trained for it are its reply and the
end-of-turn marker, as for a supervised reply; the prompt is context.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tailor.data.convert import Conversation, Message, _chat_message, _check_tool_results, type_name
from tailor.data.problems import Problems

OPENAI_OUTPUTS = (("preferred_output", "preferred_completion"), ("non_preferred_output", "non_preferred_completion"))
OPENAI_KEYS = {"input", *OPENAI_OUTPUTS[0], *OPENAI_OUTPUTS[1]}
TRL_KEYS = {"prompt", "chosen", "rejected", "tools"}


@dataclass
class Preference:
    """A prompt and two replies to it: the preferred one (chosen) and the other (rejected)."""

    prompt: list[Message]  # context only: nothing in it is trained
    chosen: Message
    rejected: Message
    line: int
    """1-based line in the JSONL file."""
    tools: list | None = None

    def conversation(self, which: str) -> Conversation:
        """The prompt followed by the chosen or the rejected reply, as the chat template sees it."""
        reply = self.chosen if which == "chosen" else self.rejected
        return Conversation([*self.prompt, reply], self.line, self.tools)

    def digest_source(self) -> list:
        return [[m.template_dict() for m in self.prompt], self.chosen.template_dict(),
                self.rejected.template_dict(), self.tools]


@dataclass
class Text:
    """A document for continued pretraining: every token is trained."""

    text: str
    line: int

    def digest_source(self) -> str:
        return self.text


# ---------------------------------------------------------------------------------------------


def from_openai_preference(obj: dict, line: int, problems: Problems) -> Preference | None:
    before = problems.error_count
    for key in obj:
        if key not in OPENAI_KEYS:
            problems.warning(line, key, "unrecognized_key", f"unknown top-level key {key!r} (ignored)",
                             "remove it, or keep it knowing it is not used")
    inp = obj.get("input")
    prompt, tools = None, None
    if not isinstance(inp, dict):
        what = "missing" if inp is None else f"a {type_name(inp)}, not an object"
        problems.error(line, "input", "missing_input", f"input is {what}",
                       'give "input": {"messages": [{"role": "user", "content": ...}]}')
    else:
        prompt = _prompt(inp.get("messages"), "input.messages", line, problems)
        tools = _tools(inp.get("tools"), "input.tools", line, problems)
    outputs = [_output(obj, names, line, problems) for names in OPENAI_OUTPUTS]
    return _pair(prompt, *outputs, tools, line, problems, before)


def from_trl_preference(obj: dict, line: int, problems: Problems) -> Preference | None:
    before = problems.error_count
    for key in obj:
        if key not in TRL_KEYS:
            problems.warning(line, key, "unrecognized_key", f"unknown top-level key {key!r} (ignored)",
                             "remove it, or keep it knowing it is not used")
    tools = obj.get("tools")
    if isinstance(tools, str):  # TRL accepts tools as a JSON string too
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            pass
    tools = _tools(tools, "tools", line, problems)
    if "prompt" not in obj and isinstance(obj.get("chosen"), list) and isinstance(obj.get("rejected"), list):
        return _implicit_prompt(obj, tools, line, problems, before)
    raw = obj.get("prompt")
    if isinstance(raw, str):
        prompt = [Message("user", raw)] if raw.strip() else None
        if prompt is None:
            problems.error(line, "prompt", "missing_content", "prompt is empty", "write the prompt")
    else:
        prompt = _prompt(raw, "prompt", line, problems)
    chosen, rejected = (_output(obj, (name,), line, problems) for name in ("chosen", "rejected"))
    return _pair(prompt, chosen, rejected, tools, line, problems, before)


def from_text(obj: dict, line: int, problems: Problems) -> Text | None:
    text = obj.get("text")
    if not isinstance(text, str):
        what = "missing" if text is None else f"a {type_name(text)}, not a string"
        problems.error(line, "text", "wrong_type" if text is not None else "message_missing_key", f"text is {what}",
                       'give "text": "the document"')
        return None
    if not text.strip():
        problems.error(line, "text", "missing_content", "text is empty", "write the document, or remove the line")
        return None
    return Text(text, line)


CONVERTERS = {"openai_preference": from_openai_preference, "trl_preference": from_trl_preference, "text": from_text}


# ---------------------------------------------------------------------------------------------


def _pair(prompt, chosen, rejected, tools, line: int, problems: Problems, before: int) -> Preference | None:
    if problems.error_count > before or prompt is None or chosen is None or rejected is None:
        return None
    pair = Preference(prompt, chosen, rejected, line, tools)
    for which in ("chosen", "rejected"):  # a tool result in the prompt answers a call made before it
        _check_tool_results(pair.conversation(which), line, problems)
    if problems.error_count > before:
        return None
    if chosen.template_dict() == rejected.template_dict():
        problems.warning(line, "", "identical_outputs", "the chosen and the rejected reply are the same, so this "
                         "pair teaches nothing (its loss has no gradient)", "write a worse rejected reply, or "
                         "remove the pair")
    return pair


def _prompt(raw: Any, path: str, line: int, problems: Problems) -> list[Message] | None:
    """The prompt's messages (none of them trained), or None after reporting its problems."""
    if not isinstance(raw, list) or not raw:
        what = "missing" if raw is None else ("empty" if isinstance(raw, list) else f"a {type_name(raw)}, not a list")
        problems.error(line, path, "missing_messages_list", f"{path} is {what}",
                       f'give "{path.split(".")[-1]}": [{{"role": "user", "content": "..."}}]')
        return None
    before = problems.error_count
    messages = [m for i, one in enumerate(raw) if (m := _chat_message(one, f"{path}[{i}]", line, problems))]
    if problems.error_count > before:
        return None
    for m in messages:
        m.train = False  # earlier assistant turns are context: only the completions are trained
    return messages


def _output(obj: dict, names: tuple[str, ...], line: int, problems: Problems) -> Message | None:
    """One completion: a string, or a list holding exactly one assistant message."""
    name = next((n for n in names if n in obj), names[0])
    raw = obj.get(name)
    if isinstance(raw, str):
        if not raw.strip():
            problems.error(line, name, "missing_content", f"{name} is empty", f"write the {name} reply")
            return None
        return Message("assistant", raw, True)
    if not isinstance(raw, list) or not raw:
        what = "missing" if raw is None else ("empty" if isinstance(raw, list) else f"a {type_name(raw)}, not a list")
        problems.error(line, name, "missing_output", f"{name} is {what}",
                       f'give "{name}": [{{"role": "assistant", "content": "..."}}]')
        return None
    if len(raw) > 1:
        problems.error(line, name, "too_many_messages", f"{name} holds {len(raw)} messages; a completion is one "
                       "assistant message", "keep the final assistant reply here and move earlier turns into the prompt")
        return None
    return _reply(raw[0], f"{name}[0]", line, problems)


def _reply(raw: Any, path: str, line: int, problems: Problems) -> Message | None:
    message = _chat_message(raw, path, line, problems)
    if message is None:
        return None
    if message.role != "assistant":
        problems.error(line, f"{path}.role", "output_not_assistant", f"the completion is a {message.role!r} message, "
                       "not the assistant's", 'make it {"role": "assistant", "content": "..."}')
        return None
    if not message.train:
        problems.error(line, f"{path}.weight", "invalid_weight", "a completion with weight 0 has nothing to train",
                       "remove weight from the completion")
        return None
    return message


def _tools(tools: Any, path: str, line: int, problems: Problems) -> list | None:
    if tools is None or tools == []:
        return None
    if not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        problems.error(line, path, "wrong_type", f"tools is a {type_name(tools)}, not a list of objects",
                       'give "tools": [{"type": "function", "function": {...}}]')
        return None
    return tools


def _implicit_prompt(obj: dict, tools, line: int, problems: Problems, before: int) -> Preference | None:
    """TRL's implicit prompt: chosen and rejected are whole conversations; the messages they
    share from the start are the prompt, and each must end in one differing assistant reply."""
    chosen, rejected = obj["chosen"], obj["rejected"]
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        problems.error(line, "prompt", "missing_messages_list", "there is no prompt: give \"prompt\", or chosen and "
                       "rejected conversations that start with the same messages",
                       'add "prompt": [{"role": "user", "content": "..."}]')
        return None
    prompt = _prompt(chosen[:shared], "chosen", line, problems)
    outputs = []
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if len(conv) - shared != 1:
            problems.error(line, name, "too_many_messages", f"{name} continues the shared prompt with "
                           f"{len(conv) - shared} messages; a completion is one assistant message",
                           "give the prompt explicitly and one assistant reply in each of chosen and rejected")
            outputs.append(None)
        else:
            outputs.append(_reply(conv[shared], f"{name}[{shared}]", line, problems))
    return _pair(prompt, *outputs, tools, line, problems, before)
