"""Problems found in a dataset: each names the line, the field, what is wrong and the fix.

Errors stop training; warnings are reported and training goes on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    line: int
    """1-based line in the file; 0 for the file as a whole."""
    path: str
    """Field path inside the line, e.g. messages[2].content; empty for the whole line."""
    kind: str
    """Stable machine name, e.g. missing_content (OpenAI's checker names where they exist)."""
    message: str
    fix: str
    severity: str  # "error" | "warning"

    def text(self, file: Path | str | None = None) -> str:
        where = f"line {self.line}" if self.line else "file"
        if self.path:
            where += f", {self.path}"
        return f"{self.severity} {where}: {self.message} [{self.kind}]. Fix: {self.fix}."

    def to_json(self) -> dict:
        return asdict(self)


class Problems:
    """An ordered collection of problems for one file."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.items: list[Problem] = []
        self.error_count = 0

    def error(self, line: int, path: str, kind: str, message: str, fix: str) -> None:
        self.items.append(Problem(line, path, kind, message, fix, "error"))
        self.error_count += 1

    def warning(self, line: int, path: str, kind: str, message: str, fix: str) -> None:
        self.items.append(Problem(line, path, kind, message, fix, "warning"))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "warning"]

    def sorted(self) -> list[Problem]:
        return sorted(self.items, key=lambda p: (p.line, p.severity != "error"))

    def by_kind(self, severity: str) -> Counter:
        return Counter(p.kind for p in self.items if p.severity == severity)

    def report(self) -> str:
        """All problems, one a line, in file order, under a one-line count."""
        head = (f"{self.path}: {self.error_count} error(s), {len(self.items) - self.error_count} warning(s)")
        return "\n".join([head] + ["  " + p.text() for p in self.sorted()])
