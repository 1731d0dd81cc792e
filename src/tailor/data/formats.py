"""Read a JSONL dataset, detect its format, validate every line, and convert each example into
one internal type: a Conversation.

Four formats are understood (one per file): OpenAI chat (`messages`), prompt/completion,
Alpaca (`instruction`/`input`/`output`) and ShareGPT (`conversations`). Every problem is
collected, not just the first, each with its line, field path, what is wrong and the fix, so a
user can repair a file in one pass.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from tailor.data.convert import CONVERTERS, Conversation, Message, type_name
from tailor.data.problems import Problems

__all__ = ["FORMAT_NAMES", "Conversation", "Message", "Parsed", "detect_format", "read"]

FORMAT_NAMES = {"chat": "OpenAI chat", "prompt_completion": "prompt/completion",
                "alpaca": "Alpaca", "sharegpt": "ShareGPT"}


@dataclass
class Parsed:
    """The outcome of reading a file: whatever could be converted, and every problem found."""

    path: Path
    format: str | None
    conversations: list[Conversation]
    problems: Problems
    lines: int = 0


def detect_format(obj: dict) -> str | None:
    if "messages" in obj:
        return "chat"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj or ("output" in obj and "prompt" not in obj):
        return "alpaca"
    if "prompt" in obj or "completion" in obj:
        return "prompt_completion"
    return None


# ---------------------------------------------------------------------------------------------
# Reading lines


def read(path: str | Path) -> Parsed:
    """Parse and validate every line of `path`."""
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
    return parse_bytes(raw, path, problems)


def parse_bytes(raw: bytes, path: Path, problems: Problems) -> Parsed:
    parsed = Parsed(path, None, [], problems)
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
        fmt = detect_format(obj)
        if fmt is None:
            problems.error(number, "", "missing_messages_list",
                           f"no recognised fields (found: {', '.join(sorted(obj)) or 'none'})",
                           'give "messages": [...], or "prompt"+"completion", "instruction"+"output", '
                           'or "conversations"')
            continue
        formats.setdefault(fmt, number)
        if parsed.format is None:
            parsed.format = fmt
        elif fmt != parsed.format:
            continue  # reported once below, for the first line that differs
        conv = CONVERTERS[fmt](obj, number, problems)
        if conv is not None:
            parsed.conversations.append(conv)
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
    n = len(parsed.conversations)
    if parsed.format is not None and 0 < n < 10:
        problems.warning(0, "", "too_few_examples", f"only {n} example(s); OpenAI requires at least 10",
                         "add more examples (50-100 well-chosen ones usually help clearly)")
    seen: dict[bytes, int] = {}
    for conv in parsed.conversations:
        # a digest, not the text: a 100,000-line file must not be held twice
        key = hashlib.blake2b(json.dumps([m.template_dict() for m in conv.messages] + [conv.tools],
                                         sort_keys=True).encode(), digest_size=16).digest()
        if key in seen:
            problems.warning(conv.line, "", "duplicate_example", f"exact duplicate of line {seen[key]}",
                             "remove the repeat (duplicates weigh an example twice)")
        else:
            seen[key] = conv.line
