"""OpenAI's graders on open models, without HTTP: string_check, text_similarity, score_model,
label_model, python (in a confined process) and multi, in OpenAI's JSON shapes.

One grading path for everything that scores: the server's graders/run, the Evals API, `tailor
eval --grader` and reinforcement fine-tuning all call

    check(grader)                       -> the grader, checked and normalised (or Invalid)
    run(grader, sample, item, ctx)      -> OpenAI's run response {reward, metadata, sub_rewards, ...}
    run_many(grader, [(sample, item)], ctx)  -> one response per pair, graded concurrently

`sample` is the model's output text (or a full sample dict with output_text, output_json, ...);
`ctx` brings what some graders need: a Sampler for model graders, a PythonPool, an embedder.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from tailor.graders import checks, model, multi, python, result, string_check, template, text_similarity
from tailor.graders.checks import Invalid
from tailor.graders.sampler import Sampled, Sampler, SamplerError

__all__ = ["Context", "Invalid", "Sampled", "Sampler", "SamplerError", "check", "run", "run_many", "scope",
           "RUN_TYPES", "CRITERIA_TYPES", "ALL_TYPES"]

ALL_TYPES = ("string_check", "text_similarity", "score_model", "label_model", "python", "multi")
RUN_TYPES = ("string_check", "text_similarity", "score_model", "python", "multi")  # graders/run, RFT
CRITERIA_TYPES = ("label_model", "string_check", "text_similarity", "python", "score_model")  # eval criteria


@dataclass
class Context:
    sampler: Sampler | None = None
    """Samples the models that score_model and label_model graders name (None: those graders fail)."""
    python: object = None
    """The sandbox.PythonPool python graders run through (None: the process's default pool)."""
    embed: Callable | None = None
    """texts -> unit vectors, for the cosine metric (None: tailor's default embedding model)."""
    max_source_bytes: int = 256 * 1024
    """Largest python grader source accepted."""


def check(grader, *, allowed: tuple[str, ...] = ALL_TYPES, path: str = "grader",
          max_source_bytes: int = 256 * 1024) -> dict:
    """The grader checked and normalised (defaults filled, unknown fields dropped); raises
    Invalid naming the first bad field's path."""
    g = checks.obj(grader, path)
    kind = g.get("type")
    if kind not in allowed:
        raise Invalid(f"{kind!r} is not a grader type accepted here; use one of {', '.join(allowed)}"
                      if kind is not None else "missing required field", f"{path}.type")
    if kind == "multi":
        inner = tuple(t for t in ALL_TYPES if t != "multi")
        return multi.check(g, path, lambda sub, where: check(sub, allowed=inner, path=where,
                                                            max_source_bytes=max_source_bytes))
    if kind == "python":
        return python.check(g, path, max_source_bytes)
    return {"string_check": string_check.check, "text_similarity": text_similarity.check,
            "score_model": model.check_score, "label_model": model.check_label}[kind](g, path)


def scope(sample, item: dict | None) -> dict:
    """The template scope for a sample (its text, or a dict with output_text and the rest)."""
    if isinstance(sample, dict):
        return template.sample_scope(sample.get("output_text") or "", item, output_json=sample.get("output_json"),
                                     output_tools=sample.get("output_tools"), choices=sample.get("choices"))
    return template.sample_scope(sample if isinstance(sample, str) else "", item)


def run(grader: dict, sample, item: dict | None = None, ctx: Context | None = None) -> dict:
    """Grade one sample with a grader already checked by `check`. Never raises for what the
    sample, the item, a model or a python grader does: errors are in metadata.errors."""
    return grade(grader, scope(sample, item), ctx or Context())


def run_many(grader: dict, pairs: list[tuple], ctx: Context | None = None, workers: int = 8) -> list[dict]:
    """Grade many (sample, item) pairs; model and python graders run concurrently, so the
    engine batches the model calls and the pool keeps its slots busy."""
    ctx = ctx or Context()
    with ThreadPoolExecutor(max(1, min(workers, len(pairs)))) as ex:
        return list(ex.map(lambda p: run(grader, p[0], p[1], ctx), pairs))


def grade(g: dict, sc: dict, ctx: Context) -> dict:
    started = time.monotonic()
    try:
        if g["type"] == "multi":
            return multi.grade(g, sc, ctx, grade)
        fn = {"string_check": string_check.grade, "text_similarity": text_similarity.grade,
              "score_model": model.grade_score, "label_model": model.grade_label, "python": python.grade}[g["type"]]
        return fn(g, sc, ctx)
    except result.GradeFailure as failure:
        return result.failed(g, failure, started=started)
    except Exception as exc:  # a bug or a library failing on odd input: this sample fails, not the caller
        return result.failed(g, result.GradeFailure("other_error", f"{type(exc).__name__}: {exc}"), started=started)
