"""`tailor eval --grader FILE.json`: every answer also graded by an OpenAI-shaped grader, through
tailor.graders, the same code the server's graders/run and Evals API use. The item a grader sees
is the question's whole JSON line ({{item.question}}, {{item.answer}} and any other key); the
sample is the model's answer. score_model and label_model graders ask --judge-url's server."""

from __future__ import annotations

import json
from pathlib import Path

from tailor.errors import TailorError


def load_grader(path: str | Path) -> dict:
    """The grader in `path`, checked; a bad one is one message naming the file and the field."""
    from tailor import graders

    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TailorError(f"{path}: no such grader file. Give a JSON file holding one grader, e.g. "
                          '{"type": "string_check", "name": "match", "input": "{{sample.output_text}}", '
                          '"reference": "{{item.answer}}", "operation": "ilike"}.') from None
    except ValueError as exc:
        raise TailorError(f"{path}: not valid JSON ({exc}).") from None
    try:
        return graders.check(raw, path="grader")
    except graders.Invalid as exc:
        raise TailorError(f"{path}: {exc.message}. Fix that field (see README, Graders and evals).") from None


def context(judge_url: str | None):
    from tailor import graders

    sampler = None
    if judge_url:
        from tailor.serve.sampler import ExternalSampler

        sampler = ExternalSampler(judge_url)
    return graders.Context(sampler=sampler)


def grade_rows(grader: dict, rows: list[dict], items: list[dict], judge_url: str | None = None) -> None:
    """Add `grader` (the reward) and `grader_error` (or None) to every row, in place."""
    from tailor import graders
    from tailor.graders.result import has_error

    results = graders.run_many(grader, [(row["output"], item) for row, item in zip(rows, items)], context(judge_url))
    for row, res in zip(rows, results):
        row["grader"] = res["reward"]
        row["grader_error"] = res["metadata"].get("error_details") if has_error(res) else None
