"""`score_model` and `label_model`: a model reads the templated messages and answers with a
score or a label. The model is sampled through the caller's Sampler, so it can be any model the
server serves to the project, or one on the operator's external endpoint.

OpenAI asks its grader model for structured output ({"result": ..., "steps": [...]}). tailor
passes the same JSON schema as `response_format` (an external endpoint may enforce it) and reads
the reply leniently: that JSON object, else a bare number (score) or one of the labels (label)."""

from __future__ import annotations

import json
import math
import re
import time

from tailor.graders import checks, result, template
from tailor.graders.sampler import SamplerError

ROLES = ("user", "assistant", "system", "developer")
_SAMPLING = {"temperature": (0, 2, False), "top_p": (0, 1, False), "seed": (None, None, True),
             "max_completions_tokens": (1, None, True), "max_completion_tokens": (1, None, True)}
DEFAULT_MAX_TOKENS = 512
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def check_score(g: dict, path: str) -> dict:
    out = _common(g, path, "score_model")
    rng = g.get("range", [0, 1])
    if (not isinstance(rng, list) or len(rng) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in rng) or rng[0] >= rng[1]):
        raise checks.Invalid("give [min, max] with min < max", f"{path}.range")
    out["range"] = [float(rng[0]), float(rng[1])]
    return out


def check_label(g: dict, path: str) -> dict:
    out = _common(g, path, "label_model")
    for key in ("labels", "passing_labels"):
        value = g.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(x, str) and x for x in value):
            raise checks.Invalid("give a non-empty array of non-empty strings", f"{path}.{key}")
        out[key] = list(value)
    unknown = [x for x in out["passing_labels"] if x not in out["labels"]]
    if unknown:
        raise checks.Invalid(f"{unknown[0]!r} is not one of labels", f"{path}.passing_labels")
    return out


def _common(g: dict, path: str, kind: str) -> dict:
    out = {"type": kind, "name": checks.string(g, "name", path, required=False, default=kind),
           "model": checks.string(g, "model", path), "input": _messages(g.get("input"), f"{path}.input")}
    params = g.get("sampling_params")
    if params is not None:
        checks.obj(params, f"{path}.sampling_params")
        out["sampling_params"] = {}
        for key, value in params.items():
            if key in _SAMPLING and value is not None:
                lo, hi, integer = _SAMPLING[key]
                out["sampling_params"][key] = checks.number(params, key, f"{path}.sampling_params", lo=lo, hi=hi,
                                                            integer=integer)
            elif key == "reasoning_effort":
                out["sampling_params"][key] = value  # no reasoning models here; kept for the echo
    return out


def _messages(value, path: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise checks.Invalid("give a non-empty array of messages {role, content}", path)
    out = []
    for i, m in enumerate(value):
        where = f"{path}[{i}]"
        checks.obj(m, where)
        role = checks.choice(m, "role", where, ROLES)
        content = m.get("content")
        if isinstance(content, dict):
            content = [content]
        if isinstance(content, list):  # content parts: only text can reach a text model
            texts = []
            for j, part in enumerate(content):
                if isinstance(part, str):
                    texts.append(part)
                elif isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text"):
                    texts.append(checks.string(part, "text", f"{where}.content[{j}]"))
                else:
                    raise checks.Invalid("only text content can be graded here (input_text or output_text parts)",
                                         f"{where}.content[{j}]")
            content = "".join(texts)
        if not isinstance(content, str):
            raise checks.Invalid("expected a string or text parts", f"{where}.content")
        checks.template_ok(content, f"{where}.content")
        out.append({"role": role, "content": content})
    return out


def _sample(g: dict, scope: dict, ctx, schema: dict, usage: result.Usage):
    messages = []
    for m in g["input"]:
        try:
            messages.append({"role": "system" if m["role"] == "developer" else m["role"],
                             "content": template.render(m["content"], scope)})
        except template.TemplateError as exc:
            raise result.GradeFailure("invalid_variable_error", str(exc)) from None
    sampler = getattr(ctx, "sampler", None)
    if sampler is None:
        raise result.GradeFailure("model_grader_server_error", "no model is available to model graders here")
    sp = g.get("sampling_params") or {}
    params = {"temperature": sp.get("temperature", 0.0), "top_p": sp.get("top_p"), "seed": sp.get("seed"),
              "max_tokens": sp.get("max_completions_tokens") or sp.get("max_completion_tokens") or DEFAULT_MAX_TOKENS,
              "response_format": {"type": "json_schema", "json_schema": {"name": "grade", "strict": True,
                                                                          "schema": schema}}}
    try:
        out = sampler.sample(g["model"], messages, params)
    except SamplerError as exc:
        raise result.GradeFailure("model_grader_server_error", str(exc)) from None
    usage.add(out.model, out.prompt_tokens, out.completion_tokens)
    if out.refusal:
        raise result.GradeFailure("model_grader_refusal_error", out.refusal)
    return out


def _json_result(text: str):
    """The `result` of a JSON object in the reply (or of the first {...} in it), else None."""
    for candidate in (text.strip(), text[text.find("{"): text.rfind("}") + 1] if "{" in text else ""):
        try:
            obj = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(obj, dict) and "result" in obj:
            return obj["result"], obj.get("steps")
    return None, None


def grade_score(g: dict, scope: dict, ctx) -> dict:
    started, usage = time.monotonic(), result.Usage()
    lo, hi = g["range"]
    schema = {"type": "object", "additionalProperties": False, "required": ["steps", "result"],
              "properties": {"steps": {"type": "array", "items": {"type": "object", "properties": {
                  "description": {"type": "string"}, "conclusion": {"type": "string"}}}},
                  "result": {"type": "number", "minimum": lo, "maximum": hi}}}
    try:
        out = _sample(g, scope, ctx, schema, usage)
    except result.GradeFailure as failure:
        return result.failed(g, failure, started=started, usage=usage, sampled_model=g["model"])
    value, steps = _json_result(out.text)
    if value is None:
        m = _NUMBER.search(out.text)
        value = m.group(0) if m else None
    try:
        score = float(value)
        if not math.isfinite(score):
            raise ValueError
    except (TypeError, ValueError):
        failure = result.GradeFailure("model_grader_parse_error",
                                      f"the grader model's reply holds no score: {out.text[:200]!r}")
        return result.failed(g, failure, started=started, usage=usage, sampled_model=out.model)
    reward = min(hi, max(lo, score))  # clipped to the range, as OpenAI's is
    return result.response(g, reward, started=started, usage=usage, sampled_model=out.model,
                           scores={"result": score, "steps": steps, "output_text": out.text})


def grade_label(g: dict, scope: dict, ctx) -> dict:
    started, usage = time.monotonic(), result.Usage()
    schema = {"type": "object", "additionalProperties": False, "required": ["steps", "result"],
              "properties": {"steps": {"type": "array"}, "result": {"type": "string", "enum": g["labels"]}}}
    try:
        out = _sample(g, scope, ctx, schema, usage)
    except result.GradeFailure as failure:
        return result.failed(g, failure, started=started, usage=usage, sampled_model=g["model"])
    label = pick_label(out.text, g["labels"])
    if label is None:
        failure = result.GradeFailure("model_grader_parse_error",
                                      f"the grader model's reply is none of the labels {g['labels']}: {out.text[:200]!r}")
        return result.failed(g, failure, started=started, usage=usage, sampled_model=out.model)
    return result.response(g, float(label in g["passing_labels"]), started=started, usage=usage,
                           sampled_model=out.model, scores={"label": label, "output_text": out.text})


def pick_label(text: str, labels: list[str]) -> str | None:
    """The label the reply gives: a JSON {"result": label}, the whole reply, or the label that
    appears first in it (whole words, any case)."""
    value, _ = _json_result(text)
    candidates = [value] if isinstance(value, str) else []
    candidates.append(text.strip().strip("\"'.*` "))
    for c in candidates:
        for label in labels:
            if c.casefold() == label.casefold():
                return label
    found = [(m.start(), label) for label in labels
             for m in [re.search(rf"(?<!\w){re.escape(label)}(?!\w)", text, re.IGNORECASE)] if m]
    return min(found)[1] if found else None
