"""The run response every grader returns, shaped like OpenAI's `graders/run`: a reward, and
metadata whose `errors` flags say what went wrong. A grader never raises for a bad sample, a
missing variable, a broken model or a python grader past its limits: it returns reward 0 with the
flag set and the detail in the flag's `_details` field."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

ERROR_FLAGS = ("formula_parse_error", "sample_parse_error", "truncated_observation_error",
               "unresponsive_reward_error", "invalid_variable_error", "other_error",
               "python_grader_server_error", "python_grader_runtime_error",
               "model_grader_server_error", "model_grader_refusal_error", "model_grader_parse_error")
# the flags whose detail has a field of its own in OpenAI's response
DETAIL_FIELDS = {"python_grader_server_error": "python_grader_server_error_type",
                 "python_grader_runtime_error": "python_grader_runtime_error_details",
                 "model_grader_server_error": "model_grader_server_error_details"}


class GradeFailure(Exception):
    """Inside a grader: stop grading this sample, reward 0, `flag` set with `detail`."""

    def __init__(self, flag: str, detail: str):
        assert flag in ERROR_FLAGS, flag
        super().__init__(detail)
        self.flag, self.detail = flag, detail


def no_errors() -> dict:
    errors = {flag: False for flag in ERROR_FLAGS}
    errors.update({f: None for f in DETAIL_FIELDS.values()})
    return errors


@dataclass
class Usage:
    """Tokens a model grader spent, per model."""

    per_model: dict = field(default_factory=dict)

    def add(self, model: str, prompt: int, completion: int) -> None:
        u = self.per_model.setdefault(model, {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                                              "cached_tokens": 0, "invocation_count": 0})
        u["prompt_tokens"] += prompt
        u["completion_tokens"] += completion
        u["total_tokens"] += prompt + completion
        u["invocation_count"] += 1

    def merge(self, other: dict) -> None:
        for model, u in other.items():
            mine = self.per_model.setdefault(model, dict.fromkeys(u, 0))
            for k, v in u.items():
                mine[k] = mine.get(k, 0) + v


def response(grader: dict, reward: float, *, started: float, errors: dict | None = None, scores: dict | None = None,
             usage: Usage | None = None, sampled_model: str | None = None, sub_rewards: dict | None = None) -> dict:
    """OpenAI's run response. `token_usage` is the grader's total tokens (null without a model)."""
    per_model = usage.per_model if usage else {}
    public = {m: {k: v for k, v in u.items() if k != "invocation_count"} for m, u in per_model.items()}
    total = sum(u["total_tokens"] for u in per_model.values()) if per_model else None
    return {"reward": float(reward),
            "metadata": {"name": grader.get("name", ""), "type": grader.get("type", ""),
                         "errors": errors or no_errors(), "execution_time": round(time.monotonic() - started, 6),
                         "scores": scores or {}, "token_usage": total, "sampled_model_name": sampled_model},
            "sub_rewards": sub_rewards or {}, "model_grader_token_usage_per_model": public}


def failed(grader: dict, failure: GradeFailure, *, started: float, usage: Usage | None = None,
           sampled_model: str | None = None) -> dict:
    errors = no_errors()
    errors[failure.flag] = True
    if failure.flag in DETAIL_FIELDS:
        errors[DETAIL_FIELDS[failure.flag]] = failure.detail
    out = response(grader, 0.0, started=started, errors=errors, usage=usage, sampled_model=sampled_model)
    out["metadata"]["error_details"] = failure.detail  # every flag's words, also those without a field
    return out


def has_error(result: dict) -> bool:
    return any(result["metadata"]["errors"].get(flag) for flag in ERROR_FLAGS)
