"""Read a JSONL dataset, detect its format, validate every line, and convert each example into
the internal type of its kind.

Four kinds of data, each in its formats (one format per file):
  chat        (supervised) OpenAI chat (`messages`), prompt/completion, Alpaca
              (`instruction`/`input`/`output`) and ShareGPT (`conversations`) -> Conversation
  preference  (DPO) OpenAI's DPO lines and TRL's prompt/chosen/rejected -> Preference
  text        (continued pretraining) `{"text": ...}` -> Text
  prompt      (reinforcement fine-tuning) OpenAI's RFT lines: `messages` ending with a user turn,
              other keys for the grader -> Prompt. Its lines look like chat lines, so it is read
              as such when asked (`read(path, fmt="rft")`: --objective grpo), never guessed.
Every problem is collected, not just the first, each with its line, field path, what is wrong
and the fix, so a user can repair a file in one pass.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from tailor.data import convert, preference, prompts
from tailor.data.convert import Conversation, Message, type_name
from tailor.data.preference import Preference, Text
from tailor.data.problems import Problems
from tailor.data.prompts import Prompt

__all__ = ["FORMAT_NAMES", "Conversation", "Message", "Parsed", "Preference", "Text", "detect_format", "kind_of",
           "peek_kind", "read"]

FORMAT_NAMES = {"chat": "OpenAI chat", "prompt_completion": "prompt/completion",
                "alpaca": "Alpaca", "sharegpt": "ShareGPT", "openai_preference": "OpenAI preference (DPO)",
                "trl_preference": "prompt/chosen/rejected preference", "text": "raw text",
                "rft": "OpenAI reinforcement (RFT prompts)"}
KINDS = {"openai_preference": "preference", "trl_preference": "preference", "text": "text",
         "rft": "prompt"}  # the rest: chat
CONVERTERS = {**convert.CONVERTERS, **preference.CONVERTERS, "rft": prompts.from_rft}


def kind_of(fmt: str | None) -> str:
    """chat (supervised examples), preference (pairs for DPO), text (raw text) or prompt (RFT)."""
    return KINDS.get(fmt or "", "chat")


@dataclass
class Parsed:
    """The outcome of reading a file: whatever could be converted, and every problem found."""

    path: Path
    format: str | None
    conversations: list[Conversation]
    problems: Problems
    lines: int = 0
    pairs: list[Preference] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)
    prompts: list[Prompt] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return kind_of(self.format)

    @property
    def items(self) -> list:
        """The file's examples, of its kind: Conversations, Preferences, Texts or Prompts."""
        return {"chat": self.conversations, "preference": self.pairs, "text": self.texts,
                "prompt": self.prompts}[self.kind]


def detect_format(obj: dict) -> str | None:
    if "messages" in obj:
        return "chat"
    if any(k in obj for names in preference.OPENAI_OUTPUTS for k in names):
        return "openai_preference"
    if "chosen" in obj or "rejected" in obj:
        return "trl_preference"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj or ("output" in obj and "prompt" not in obj):
        return "alpaca"
    if "prompt" in obj or "completion" in obj:
        return "prompt_completion"
    if "text" in obj:
        return "text"
    return None


def peek_kind(path: str | Path) -> str | None:
    """The kind of data a file holds, from its first line that is a JSON object (None when none
    is): enough to refuse the wrong file before rendering the whole of it."""
    try:
        with open(path, "rb") as f:
            return peek_lines(f)
    except OSError:
        return None


def peek_lines(lines) -> str | None:
    """peek_kind over an iterable of raw lines."""
    for raw in lines:
        try:
            obj = json.loads(raw.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(obj, dict) and detect_format(obj):
            return "prompt" if _ends_with_user(obj) else kind_of(detect_format(obj))
    return None


def _ends_with_user(obj: dict) -> bool:
    """An OpenAI chat line whose last message is the user's: a prompt to answer (RFT), not an
    example to learn."""
    messages = obj.get("messages")
    return (detect_format(obj) == "chat" and isinstance(messages, list) and bool(messages)
            and isinstance(messages[-1], dict) and messages[-1].get("role") == "user")


# ---------------------------------------------------------------------------------------------
# Reading lines


def read(path: str | Path, fmt: str | None = None) -> Parsed:
    """Parse and validate every line of `path`; `fmt` reads every line as that format (e.g.
    "rft") instead of detecting it."""
    path = Path(path)
    problems = Problems(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        problems.error(0, "", "file_not_found", f"there is no file at {path.resolve()}",
                       "check the path")
        return Parsed(path, None, [], problems)
    except OSError as exc:
        problems.error(0, "", "unreadable", f"cannot read the file: {exc.strerror}", "check the path and permissions")
        return Parsed(path, None, [], problems)
    return parse_bytes(raw, path, problems, fmt)


def parse_bytes(raw: bytes, path: Path, problems: Problems, fmt: str | None = None) -> Parsed:
    parsed = Parsed(path, fmt, [], problems)
    if raw.startswith(b"\xef\xbb\xbf"):
        problems.warning(1, "", "bom", "the file starts with a UTF-8 byte-order mark (BOM); it is ignored",
                         "save the file as UTF-8 without BOM")
        raw = raw[3:]
    if not raw.strip():
        problems.error(0, "", "empty_file", "the file has no examples",
                       "write one JSON object per line, e.g. {\"messages\": [...]}")
        return parsed
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final newline ends the last line; it does not start a blank one
    parsed.lines = len(lines)
    crlf = 0
    formats: dict[str, int] = {}  # format -> first line seen
    for number, data in enumerate(lines, start=1):
        if data.endswith(b"\r"):
            crlf += 1
            data = data[:-1]
        obj = _decode_line(number, data, problems)
        if obj is None:
            continue
        found = parsed.format if fmt else detect_format(obj)
        if found is None:
            problems.error(number, "", "missing_messages_list",
                           f"no recognised fields (found: {', '.join(sorted(obj)) or 'none'})",
                           'give "messages": [...], or "prompt"+"completion", "instruction"+"output", '
                           '"conversations", a preference pair ("input"+"preferred_output"+"non_preferred_output", '
                           'or "prompt"+"chosen"+"rejected"), or "text"')
            continue
        formats.setdefault(found, number)
        if parsed.format is None:
            parsed.format = found
        elif found != parsed.format:
            continue  # reported once below, for the first line that differs
        item = CONVERTERS[found](obj, number, problems)
        if item is not None:
            parsed.items.append(item)
    if crlf:
        problems.warning(1, "", "crlf", f"{crlf} line(s) end with CRLF (Windows line endings); they are read "
                         "as if they ended with LF", "convert the file to LF endings (dos2unix)")
    _check_mixed(formats, parsed, problems)
    _check_file(parsed, problems)
    return parsed


def _decode_line(number: int, data: bytes, problems: Problems) -> dict | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.error(number, "", "not_utf8", f"byte {exc.start + 1} of the line is not valid UTF-8",
                       "save the file as UTF-8")
        return None
    if not text.strip():
        problems.warning(number, "", "blank_line", "blank line (skipped)", "delete the empty line")
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        problems.error(number, "", "invalid_json", f"invalid JSON at column {exc.colno}: {exc.msg}",
                       "each line must be one complete JSON object")
        return None
    if not isinstance(obj, dict):
        problems.error(number, "", "data_type", f"the line is a JSON {type_name(obj)}, not an object",
                       'write one object per line: {"messages": [...]}')
        return None
    return obj


def _check_mixed(formats: dict[str, int], parsed: Parsed, problems: Problems) -> None:
    if len(formats) < 2:
        return
    first = parsed.format
    other_fmt, other_line = min(((f, n) for f, n in formats.items() if f != first), key=lambda x: x[1])
    problems.error(other_line, "", "mixed_formats",
                   f"this line is {FORMAT_NAMES[other_fmt]} but the file started as {FORMAT_NAMES[first]} "
                   f"(line {formats[first]}); a file must use one format",
                   f"convert every line to {FORMAT_NAMES[first]}, or split the file")


def _check_file(parsed: Parsed, problems: Problems) -> None:
    n = len(parsed.items)
    if parsed.format is not None and 0 < n < 10:
        problems.warning(0, "", "too_few_examples", f"only {n} example(s); OpenAI requires at least 10",
                         "add more examples (50-100 well-chosen ones usually help clearly)")
    seen: dict[bytes, int] = {}
    for item in parsed.items:
        # a digest, not the text: a 100,000-line file must not be held twice
        key = hashlib.blake2b(json.dumps(_digest_source(item), sort_keys=True).encode(), digest_size=16).digest()
        if key in seen:
            problems.warning(item.line, "", "duplicate_example", f"exact duplicate of line {seen[key]}",
                             "remove the repeat (duplicates weigh an example twice)")
        else:
            seen[key] = item.line


def _digest_source(item):
    if isinstance(item, Conversation):
        return [m.template_dict() for m in item.messages] + [item.tools]
    return item.digest_source()
