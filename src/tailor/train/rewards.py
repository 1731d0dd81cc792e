"""GRPO's rewards: each sampled reply scored by the run's grader (tailor.graders: the one grading
path `tailor eval`, the Evals API and graders/run use) or by --reward's Python function.

Grading overlaps generation: a reply is handed to `submit` the moment the engine finishes it,
and a thread grades it while the other replies are still being sampled (a python grader runs in
the sandbox pool's own processes, so it truly runs in parallel). A grader that asks a model
(score_model) would compete with the rollouts for the same cores, so it runs after them, with
the replies graded concurrently (`late`).
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tailor.errors import TailorError


@dataclass
class Score:
    reward: float
    sub: dict[str, float] = field(default_factory=dict)  # a multi grader's sub-rewards, by key
    error: str | None = None  # why the grader failed on this reply (it then scores 0)


# ---- the options, checked in TrainConfig's resolve ------------------------------------------------


def read_json_option(name: str, value: str) -> dict:
    """A config value that is a JSON object or a JSON file's path -> the object (TailorError
    naming the option and the file when it is neither)."""
    text = value.strip()
    where = f"{name}"
    if not text.startswith("{"):
        path = Path(value)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TailorError(f"{name}: {value} is neither a JSON object nor an existing file") from None
        except OSError as exc:
            raise TailorError(f"{name}: cannot read {value} ({exc.strerror})") from None
        where = f"{name} ({value})"
    try:
        found = json.loads(text)
    except ValueError as exc:
        raise TailorError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(found, dict):
        raise TailorError(f"{where}: give a JSON object")
    return found


def checked_grader(value: str) -> str:
    """--grader's grader, checked as RFT accepts them (no label_model), as compact JSON text."""
    from tailor import graders

    raw = read_json_option("grader", value)
    try:
        return json.dumps(graders.check(raw, allowed=graders.RUN_TYPES, path="grader"))
    except graders.Invalid as exc:
        raise TailorError(f"{exc.message} (--grader)") from None


def checked_response_format(value: str) -> str:
    from tailor.infer import schema
    from tailor.infer.grammar import GrammarError

    raw = read_json_option("response_format", value)
    try:
        found = schema.response_schema(raw)
        if found is not None:
            schema.check(found[0], strict=found[1])
    except GrammarError as exc:
        raise TailorError(f"response_format: {exc}" + (f" (at {exc.path})" if exc.path else "")) from None
    return json.dumps(raw)


def load_function(ref: str):
    """--reward module:function, imported with the working directory on the path."""
    module, _, name = ref.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        fn = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise TailorError(f"--reward {ref}: cannot import {module} ({exc})") from None
    except AttributeError:
        raise TailorError(f"--reward {ref}: {module} has no {name}") from None
    if not callable(fn):
        raise TailorError(f"--reward {ref}: {name} is not a function")
    return fn


# ---- scoring ---------------------------------------------------------------------------------------


class Rewards:
    """Scores replies for one run: `submit` as each reply is done, `collect` when all are."""

    def __init__(self, cfg, workers: int = 4):
        from tailor import graders

        self.grader = json.loads(cfg.grader) if cfg.grader else None
        self.function = load_function(cfg.reward) if cfg.reward else None
        sampler = None
        if cfg.judge_url:
            from tailor.serve.sampler import ExternalSampler

            sampler = ExternalSampler(cfg.judge_url)
        self.ctx = graders.Context(sampler=sampler)
        self.late = self.grader is not None and _asks_a_model(self.grader)
        self.keys = tuple(self.grader["graders"]) if self.grader and self.grader["type"] == "multi" else ()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="tailor-rewards")
        self._lock = threading.Lock()
        self.first_error: str | None = None

    def submit(self, text: str, item: dict, output_json=None) -> Future:
        """Grade one reply in the background (a model grader: queued until `collect`)."""
        if self.late:
            f: Future = Future()
            f.set_result((text, item, output_json))
            return f
        return self._pool.submit(self._score, text, item, output_json)

    def collect(self, futures: list[Future]) -> list[Score]:
        out = [f.result() for f in futures]
        if self.late:
            out = list(self._pool.map(lambda args: self._score(*args), out))
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _score(self, text: str, item: dict, output_json=None) -> Score:
        from tailor import graders
        from tailor.graders import template
        from tailor.graders.result import has_error

        if self.function is not None:
            sample = template.sample_scope(text, item, output_json=output_json)["sample"]
            try:
                return Score(float(self.function(sample, item)))
            except Exception as exc:  # the operator's code: counted and said once, the reply scores 0
                return self._failed(f"{type(exc).__name__}: {exc}")
        res = graders.run(self.grader, {"output_text": text, "output_json": output_json}, item, self.ctx)
        sub = {k: float(v) for k, v in res.get("sub_rewards", {}).items() if k in self.keys}
        if has_error(res):
            detail = res["metadata"].get("error_details") or next(
                k for k, v in res["metadata"]["errors"].items() if v is True)
            return self._failed(str(detail), res["reward"], sub)
        return Score(float(res["reward"]), sub)

    def _failed(self, why: str, reward: float = 0.0, sub: dict | None = None) -> Score:
        with self._lock:
            if self.first_error is None:
                self.first_error = why
        return Score(reward, sub or {}, why)


def _asks_a_model(grader: dict) -> bool:
    if grader["type"] == "multi":
        return any(_asks_a_model(g) for g in grader["graders"].values())
    return grader["type"] in ("score_model", "label_model")
