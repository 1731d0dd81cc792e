"""Reading QA.jsonl: one {"question": ..., "answer": ...} object per line. Other keys (a
"source", say, as RAFT's questions file has) are allowed and ignored, so one file can serve
both `tailor data rag` and `tailor eval`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tailor.errors import TailorError


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    line: int
    """1-based line in the file."""
    fields: dict = field(default_factory=dict, compare=False)
    """The whole JSON line (what a grader sees as `item`)."""


def read_qa(path: str | Path) -> list[QA]:
    """Every question of `path`; all bad lines at once in one TailorError (file:line: field: what. Fix: how)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise TailorError(f"{path}: no such file. Give a JSONL file of {{\"question\", \"answer\"}} lines.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TailorError(f"{path}: cannot read it as UTF-8 text ({exc}).") from exc
    items, problems = [], []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        item = _parse(text, number, path, problems)
        if item is not None:
            items.append(item)
    if not items and not problems:
        problems.append(f"{path}: the file has no questions. Fix: write one "
                        '{"question": "...", "answer": "..."} object per line.')
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise TailorError(f"{len(problems)} problem(s) in {path}:\n  " + "\n  ".join(problems[:20]) + more)
    return items


def _parse(text: str, number: int, path: Path, problems: list[str]) -> QA | None:
    where = f"{path}:{number}"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        problems.append(f"{where}: invalid JSON at column {exc.colno}: {exc.msg}. Fix: one complete JSON object per line.")
        return None
    if not isinstance(obj, dict):
        problems.append(f"{where}: the line is not a JSON object. Fix: write {{\"question\": ..., \"answer\": ...}}.")
        return None
    ok = True
    for key in ("question", "answer"):
        value = obj.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "answer":
            obj[key] = str(value)  # "answer": 42 means "42"
        elif not isinstance(value, str) or not value.strip():
            what = "missing" if value is None else ("empty" if isinstance(value, str) else
                                                   f"a {type(value).__name__}, not a string")
            problems.append(f"{where}: {key}: {what}. Fix: give \"{key}\" as a non-empty string.")
            ok = False
    return QA(obj["question"].strip(), obj["answer"].strip(), number, obj) if ok else None
