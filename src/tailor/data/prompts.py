"""Prompts for reinforcement fine-tuning (GRPO): OpenAI's RFT lines, one parsed JSON line ->
one Prompt, every problem collected on the way.

    {"messages": [{"role": "user", "content": "What is 17 + 25?"}], "answer": "42"}

`messages` end with a user turn (the model writes the reply); `tools` is optional; every other
key is the item the grader reads as {{item.answer}} (OpenAI reserves only messages and tools; the
grader sees the whole line). `check_grader` checks that every {{item.*}} a grader names exists in
every line, so a typo fails `tailor data check` instead of scoring every reply 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tailor.data.convert import Message, chat_conversation, messages_list
from tailor.data.problems import Problems

RESERVED = ("messages", "tools", "parallel_tool_calls")


@dataclass
class Prompt:
    """A conversation for the model to answer, and the item its grader reads."""

    messages: list[Message]
    line: int
    """1-based line in the JSONL file."""
    item: dict
    """The whole line: the grader's {{item.*}}."""
    tools: list | None = None

    def template_messages(self) -> list[dict]:
        return [m.template_dict() for m in self.messages]

    def digest_source(self):
        return self.item


def from_rft(obj: dict, line: int, problems: Problems) -> Prompt | None:
    messages = messages_list(obj, line, problems,
                             'give "messages": [{"role": "user", "content": "..."}] and the keys your grader reads')
    if messages is None:
        return None
    before = problems.error_count
    conv = chat_conversation(messages, obj.get("tools"), line, problems, training=False)
    if conv is None or problems.error_count > before:
        return None
    last = conv.messages[-1]
    if last.role != "user":
        problems.error(line, f"messages[{len(messages) - 1}].role", "last_message_not_user",
                       f"the last message is the {last.role}'s; a prompt ends with a user turn, which the model "
                       "answers", "end each line's messages with the user's message (the reply is sampled and graded)")
        return None
    return Prompt(conv.messages, line, obj, conv.tools)


# ---- the grader's {{item.*}} -------------------------------------------------------------------


def item_variables(grader: dict) -> list[str]:
    """Every {{item...}} expression in a grader's templates (a python grader's source is code,
    not a template: what it reads from `item` is its own to check)."""
    from tailor.graders import template

    found: list[str] = []

    def walk(value, key=None):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif isinstance(value, str) and key != "source":
            found.extend(e for e in template.variables(value) if e.startswith("item") and e not in found)

    walk(grader)
    return found


def check_grader(grader: dict, prompts: list[Prompt], problems: Problems) -> None:
    """An error for each line that lacks a key the grader reads, naming the line and the key."""
    from tailor.graders import template

    for expr in item_variables(grader):
        for p in prompts:
            try:
                template.lookup(expr, {"item": p.item})
            except template.TemplateError as exc:
                key = ".".join(str(s) for s in template.parse(expr)[1]) or "item"
                detail = str(exc).split(": ", 1)[-1]
                problems.error(p.line, key, "missing_grader_variable", f"the grader reads {{{{ {expr} }}}}, but "
                               f"{detail} in this line",
                               f"add \"{key.split('.')[0]}\" to this line, or change the grader's template")


# ---- rendered for training ----------------------------------------------------------------------


@dataclass
class PromptIds:
    """A prompt rendered with the chat template, ready to be answered."""

    input_ids: np.ndarray
    item: dict
    line: int
    messages: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


def render(prompts: list[Prompt], tokenizer, room: int) -> tuple[list[PromptIds], list[str]]:
    """Each prompt's token ids (the template's assistant opening included); a prompt longer than
    `room` tokens (--max-length minus --max-completion-tokens) is dropped, with a warning."""
    from tailor.data.templates import render_prompt

    out, dropped = [], []
    for p in prompts:
        messages = p.template_messages()
        ids = render_prompt(tokenizer, messages, p.tools)
        if len(ids) > room:
            dropped.append(p.line)
            continue
        out.append(PromptIds(np.asarray(ids, dtype=np.int64), p.item, p.line, messages))
    warnings = []
    if dropped:
        lines = ", ".join(map(str, dropped[:10])) + (" ..." if len(dropped) > 10 else "")
        warnings.append(f"{len(dropped)} prompt(s) longer than {room} tokens (--max-length minus "
                        f"--max-completion-tokens) were dropped: line(s) {lines}")
    return out, warnings
