"""Eval results as a table and as a JSON file: summaries, the printed table, atomic writes, and
reading results back (to compare runs, e.g. a base model's file beside a fine-tune's)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from tailor.errors import TailorError

METRICS = ("exact", "contains", "judge")


def summarize(rows: list[dict]) -> dict:
    """Mean exact, contains (and judge) over the rows, mean reference loss over the rows that have
    one, and n. A judge answer that was neither yes nor no (None) counts in no mean."""
    out = {"n": len(rows)}
    for key in METRICS:
        if not any(key in r for r in rows):
            continue  # no judge ran
        votes = [r[key] for r in rows if r.get(key) is not None]
        out[key] = sum(map(bool, votes)) / len(votes) if votes else None
    if any("grader" in r for r in rows):  # the mean reward of --grader (a reward, not a share)
        out["grader"] = sum(r["grader"] for r in rows) / len(rows) if rows else None
    losses = [r["ref_loss"] for r in rows if r.get("ref_loss") is not None]
    out["ref_loss"] = sum(losses) / len(losses) if losses else None
    return out


def table(conditions: list[dict]) -> str:
    """One row per condition: exact, contains, (judge,) reference loss and n, aligned."""
    judged = any("judge" in c["summary"] for c in conditions)
    graded = any("grader" in c["summary"] for c in conditions)
    head = ["condition", "exact", "contains"] + (["judge"] if judged else []) + (["grader"] if graded else []) + [
        "ref loss", "n"]
    body = []
    for c in conditions:
        s = c["summary"]
        cells = [c["name"], _pct(s.get("exact")), _pct(s.get("contains"))]
        cells += [_pct(s.get("judge"))] if judged else []
        cells += ["-" if s.get("grader") is None else f"{s['grader']:.3f}"] if graded else []
        cells += ["-" if s.get("ref_loss") is None else f"{s['ref_loss']:.3f}", str(s["n"])]
        body.append(cells)
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body])


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def write_json(path: str | Path, results: dict) -> Path:
    """Write atomically: a reader (or a crash) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_results(path: str | Path) -> dict:
    """A results file written by `tailor eval --out`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TailorError(f"{path}: no such results file (write one with tailor eval --out).") from None
    except (OSError, ValueError) as exc:
        raise TailorError(f"{path}: not a readable JSON results file ({exc}).") from exc
    if not isinstance(data, dict) or not isinstance(data.get("conditions"), list) or not all(
            isinstance(c, dict) and "name" in c and "summary" in c for c in data["conditions"]):
        raise TailorError(f"{path}: not a tailor eval results file (no \"conditions\" with name and summary).")
    return data
