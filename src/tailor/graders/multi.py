"""`multi`: several graders on the same sample, combined by a formula over their rewards
(`calculate_output`, see formula.py). OpenAI's guide writes `graders` as an object {key: grader}
whose keys the formula names; a list (keyed by each grader's name) or a single grader is
accepted too. A multi cannot hold another multi."""

from __future__ import annotations

import re
import time

from tailor.graders import checks, formula, result

_KEY = re.compile(r"^[A-Za-z_]\w*$")


def check(g: dict, path: str, check_one) -> dict:
    """`check_one(grader, path)` checks one sub-grader (kinds other than multi)."""
    raw = g.get("graders")
    if isinstance(raw, dict) and "type" in raw and isinstance(raw.get("type"), str):
        raw = [raw]  # the SDK's current type: one grader
    if isinstance(raw, list):
        keyed = {}
        for i, sub in enumerate(raw):
            name = checks.string(checks.obj(sub, f"{path}.graders[{i}]"), "name", f"{path}.graders[{i}]")
            if name in keyed:
                raise checks.Invalid(f"two graders are named {name!r}; the formula needs distinct names",
                                     f"{path}.graders[{i}].name")
            keyed[name] = (sub, f"{path}.graders[{i}]")
    elif isinstance(raw, dict) and raw:
        keyed = {key: (sub, f"{path}.graders.{key}") for key, sub in raw.items()}
    else:
        raise checks.Invalid("give the graders as an object {key: grader}", f"{path}.graders")
    graders = {}
    for key, (sub, where) in keyed.items():
        if not _KEY.match(key):
            raise checks.Invalid(f"{key!r} cannot be named in a formula; use letters, digits and _", where)
        if checks.obj(sub, where).get("type") == "multi":
            raise checks.Invalid("a multi grader cannot hold another multi grader", f"{where}.type")
        graders[key] = check_one(sub, where)
    text = checks.string(g, "calculate_output", path)
    try:
        formula.parse(text, set(graders))
    except formula.FormulaError as exc:
        raise checks.Invalid(str(exc), f"{path}.calculate_output") from None
    return {"type": "multi", "name": checks.string(g, "name", path, required=False, default="multi"),
            "graders": graders, "calculate_output": text}


def grade(g: dict, scope: dict, ctx, grade_one) -> dict:
    """`grade_one(grader, scope, ctx)` grades one sub-grader into a run response."""
    started = time.monotonic()
    subs = {key: grade_one(sub, scope, ctx) for key, sub in g["graders"].items()}
    usage = result.Usage()
    errors = result.no_errors()
    for sub in subs.values():
        usage.merge(sub["model_grader_token_usage_per_model"])
        for flag, value in sub["metadata"]["errors"].items():
            if value and not errors.get(flag):
                errors[flag] = value
    rewards = {key: sub["reward"] for key, sub in subs.items()}
    try:
        reward = formula.evaluate(formula.parse(g["calculate_output"], set(rewards)), rewards)
    except formula.FormulaError as exc:
        errors["formula_parse_error"] = True
        reward, detail = 0.0, str(exc)
    else:
        detail = None
    models = {sub["metadata"]["sampled_model_name"] for sub in subs.values()} - {None}
    out = result.response(g, reward, started=started, errors=errors, usage=usage, sub_rewards=rewards,
                          scores={key: sub["metadata"]["scores"] for key, sub in subs.items()},
                          sampled_model=", ".join(sorted(models)) or None)
    if detail:
        out["metadata"]["error_details"] = detail
    return out
