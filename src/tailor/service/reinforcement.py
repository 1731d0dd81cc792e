"""A job's `method: reinforcement` (OpenAI's RFT) -> what its training run needs: the grader,
checked at create (a bad one is a 400 naming its field), the prompts' {{item.*}} checked against
it, and the hyperparameters' "auto" values resolved by a written rule (jobs.AUTO_RFT_BATCH_SIZE):

    n_epochs            auto: OpenAI's supervised rule on the number of prompts (data.report.auto_epochs)
    batch_size          prompts per step; auto: 4
    learning_rate_multiplier  auto: 1 (x tailor's lr for the method: LoRA 2e-4, full 2e-5)
    eval_interval       steps between evaluations; auto: about 4 per run
    eval_samples        replies sampled per validation prompt at each evaluation; auto: 1
    compute_multiplier  scales the replies per prompt: num_generations = max(2, round(base x it)),
                        base = tailor.num_generations (8); auto: 1
    reasoning_effort    recorded; it changes nothing for models without a reasoning mode (all
                        that tailor trains today)

Graders that ask a model (score_model) are refused here: a job's training process has no
model to ask (the CLI's --judge-url gives one)."""

from __future__ import annotations

import json

from tailor.service.errors import invalid

_WHERE = "method.reinforcement"


def method_body(req: dict) -> dict:
    """{"grader": checked grader, "response_format": ...?} from method.reinforcement (400s name the field)."""
    from tailor import graders

    body = req["method"].get("reinforcement") or {}
    if "grader" not in body:
        raise invalid("Missing required parameter: 'method.reinforcement.grader'.", f"{_WHERE}.grader",
                      "missing_required_parameter")
    try:
        grader = graders.check(body["grader"], allowed=graders.RUN_TYPES, path=f"{_WHERE}.grader")
    except graders.Invalid as exc:
        raise invalid(f"Invalid grader: {exc.message}.", exc.param) from None
    if _asks_a_model(grader):
        raise invalid("score_model graders are not available in reinforcement jobs on this server: the training "
                      "process has no model to ask. Use string_check, text_similarity or python graders (or a multi "
                      "of them).", f"{_WHERE}.grader.type", "unsupported_grader")
    out = {"grader": grader}
    fmt = body.get("response_format")
    if fmt is not None:
        from tailor.infer import schema
        from tailor.infer.grammar import GrammarError

        try:
            found = schema.response_schema(fmt)
            if found is not None:
                schema.check(found[0], strict=found[1])
        except GrammarError as exc:
            raise invalid(f"Invalid {_WHERE}.response_format: {exc}", f"{_WHERE}.{exc.path or 'response_format'}") \
                from None
        out["response_format"] = fmt
    return out


def _asks_a_model(grader: dict) -> bool:
    if grader["type"] == "multi":
        return any(_asks_a_model(g) for g in grader["graders"].values())
    return grader["type"] in ("score_model", "label_model")


def check_items(store, grader: dict, train_file: dict, val_file: dict | None) -> None:
    """Every {{item.*}} the grader reads exists in every line of both files: a 400 naming the
    file's parameter, the first line and key that lack one."""
    from tailor.data import formats, prompts

    if not prompts.item_variables(grader):
        return
    for param, f in (("training_file", train_file), ("validation_file", val_file)):
        if f is None:
            continue
        path = store.blob_path("files", f["id"])
        if path is None:
            continue
        parsed = formats.read(path, fmt="rft")
        prompts.check_grader(grader, parsed.prompts, parsed.problems)
        errors = parsed.problems.errors
        if errors:
            first = errors[0]
            raise invalid(f"File '{f['id']}' does not fit the grader: line {first.line}, {first.path}: {first.message}"
                          f" ({len(errors)} problem(s)). Fix: {first.fix}.", param, f"invalid_{param}")


def resolve(hyper: dict) -> dict:
    """The reinforcement hyperparameters with "auto" replaced (see the module doc)."""
    return {"eval_interval": None if hyper["eval_interval"] == "auto" else hyper["eval_interval"],
            "eval_samples": 1 if hyper["eval_samples"] == "auto" else hyper["eval_samples"],
            "compute_multiplier": 1.0 if hyper["compute_multiplier"] == "auto" else hyper["compute_multiplier"],
            "reasoning_effort": hyper["reasoning_effort"]}


def train_settings(knobs_cfg, resolved: dict, reward: dict, policy) -> dict:
    """The TrainConfig keys the job sets: objective, grader, replies per prompt, evaluations."""
    generations = max(2, round(knobs_cfg.num_generations * resolved["compute_multiplier"]))
    if generations > policy.max_num_generations:
        raise invalid(f"{knobs_cfg.num_generations} replies per prompt x compute_multiplier "
                      f"{resolved['compute_multiplier']:g} is {generations}; this server allows at most "
                      f"{policy.max_num_generations} (its operator's --max-num-generations).",
                      f"{_WHERE}.hyperparameters.compute_multiplier", "option_out_of_bounds")
    out = {"objective": "grpo", "grader": json.dumps(reward["grader"]), "num_generations": generations,
           "eval_every": resolved["eval_interval"], "eval_generations": resolved["eval_samples"]}
    if "response_format" in reward:
        out["response_format"] = json.dumps(reward["response_format"])
    return out
