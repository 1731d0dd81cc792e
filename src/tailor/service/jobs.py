"""Fine-tuning jobs without HTTP: check a create request, resolve "auto" hyperparameters into
the TrainConfig the job will run, and keep the job's OpenAI-shaped object, events and
checkpoints in the store. The worker (worker.py) moves jobs from `queued` onwards."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path
from typing import Callable

from tailor.service import files, integrations, policy as tenancy, reinforcement
from tailor.service.errors import ServiceError, invalid, not_found, rate_limited
from tailor.service.store import Store, new_id

FINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("validating_files", "queued", "running", "paused")  # what counts against a project's job quota
KEEP_CHECKPOINTS = 3  # OpenAI keeps the last three; tailor.keep_checkpoints may change it
AUTO_BATCH_SIZE = 8  # tailor's own default micro-batch; OpenAI publishes no rule for "auto"
# TrainConfig fields a job sets itself; the `tailor` object may set any other.
_RESERVED = {"data": "training_file", "val": "validation_file", "model": "model", "out": None, "resume": None,
             "seed": "seed", "epochs": "hyperparameters.n_epochs", "batch_size": "hyperparameters.batch_size",
             "lr": "hyperparameters.learning_rate_multiplier", "report_to": "integrations",
             "run_name": "integrations", "tracker_project": "integrations", "tracker_tags": "integrations",
             "tracker_entity": "integrations", "objective": "method.type"}
# ...and those a method sets itself, besides
_METHOD_RESERVED = {"dpo": {"beta": "method.dpo.hyperparameters.beta"},
                    "reinforcement": {"grader": "method.reinforcement.grader", "reward": "method.reinforcement.grader",
                                      "response_format": "method.reinforcement.response_format",
                                      "eval_every": "method.reinforcement.hyperparameters.eval_interval",
                                      "eval_generations": "method.reinforcement.hyperparameters.eval_samples"}}
# method type -> (hyperparameters with (kind, low, high) bounds, or the allowed words, the data kind its files
# hold); OpenAI's spec bounds
_COMMON = {"n_epochs": (int, 1, 50), "batch_size": (int, 1, 256), "learning_rate_multiplier": (float, 1e-6, 100.0)}
METHODS = {"supervised": (_COMMON, ("chat", "text")),
           "dpo": ({**_COMMON, "beta": (float, 1e-6, 2.0)}, ("preference",)),
           "reinforcement": ({**_COMMON, "eval_interval": (int, 1, 100000), "eval_samples": (int, 1, 1000),
                              "compute_multiplier": (float, 1e-5, 10.0),
                              "reasoning_effort": ("default", "low", "medium", "high")}, ("prompt",))}
AUTO_BETA = 0.1  # TRL's default, and the DPO paper's
# Reinforcement's "auto" (OpenAI publishes no rule): 4 prompts per step, each with
# num_generations replies (8, TRL's default; times compute_multiplier, at least 2); one reply per
# validation prompt at each evaluation; evaluations about 4 times per run, as tailor's default.
AUTO_RFT_BATCH_SIZE = 4
_SUFFIX = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# model -> (training reference, name used in fine_tuned_model); raises ServiceError when unknown
ModelResolver = Callable[[str], "tuple[str, str]"]


def public(body: dict) -> dict:
    return {k: v for k, v in body.items() if not k.startswith("_")}


def create(store: Store, project: str, req: dict, resolve_model: ModelResolver,
           policy: tenancy.Policy | None = None) -> dict:
    """Check `req` (a job-create body) against the operator's `policy`, then store the job as
    `queued` with its events."""
    policy = policy or tenancy.Policy()
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    ref, base_name = resolve_model(model)
    kind, hyper = _hyperparameters(req)
    reward = reinforcement.method_body(req) if kind == "reinforcement" else {}
    train_file = _data_file(store, project, req.get("training_file"), "training_file", required=True, method=kind)
    val_file = _data_file(store, project, req.get("validation_file"), "validation_file",
                          required=kind == "reinforcement", method=kind)
    if kind == "reinforcement":
        reinforcement.check_items(store, reward["grader"], train_file, val_file)
    suffix, seed, metadata = _suffix(req.get("suffix")), _seed(req.get("seed")), _metadata(req.get("metadata"))
    n = train_file["_examples"]
    auto_batch = AUTO_RFT_BATCH_SIZE if kind == "reinforcement" else AUTO_BATCH_SIZE
    resolved = {"n_epochs": _auto_epochs(n) if hyper["n_epochs"] == "auto" else hyper["n_epochs"],
                "batch_size": auto_batch if hyper["batch_size"] == "auto" else hyper["batch_size"],
                "learning_rate_multiplier": 1.0 if hyper["learning_rate_multiplier"] == "auto"
                else hyper["learning_rate_multiplier"]}
    if kind == "dpo":
        resolved["beta"] = AUTO_BETA if hyper["beta"] == "auto" else hyper["beta"]
    if kind == "reinforcement":
        resolved.update(reinforcement.resolve(hyper))
    train_cfg = _train_config(ref, req.get("tailor"), resolved, seed, policy, project, kind, reward)
    wired = integrations.parse(req.get("integrations"))
    jid = new_id("ftjob-")
    train_cfg.update(integrations.train_settings(wired, jid, model))
    now = int(time.time())
    job = {"id": jid, "object": "fine_tuning.job", "created_at": now, "error": None, "fine_tuned_model": None,
           "finished_at": None, "hyperparameters": {k: resolved[k] for k in _COMMON}, "model": model, "organization_id": f"org-{project}",
           "result_files": [], "seed": seed, "status": "validating_files", "trained_tokens": None,
           "training_file": train_file["id"], "validation_file": val_file["id"] if val_file else None,
           "estimated_finish": None, "integrations": wired, "metadata": metadata, "user_provided_suffix": suffix,
           "method": {"type": kind, kind: {**reward, "hyperparameters": resolved}},
           "_train": train_cfg, "_model_name": f"ft:{base_name}:{project}:{suffix or ''}:{jid[6:14]}",
           "_project": project}
    with store.transaction():  # the quota check and the insert as one
        if store.count("jobs", project=project, statuses=ACTIVE) >= policy.max_project_jobs:
            raise rate_limited(f"This project already has {policy.max_project_jobs} jobs queued, running or paused, "
                               "the most this server allows; wait for one to finish or cancel one.")
        store.put("jobs", job, project=project)
        event(store, job, f"Validating training file: {train_file['id']}"
              + (f" and validation file: {val_file['id']}" if val_file else ""))
        event(store, job, "Files validated, moving job to queued state")
        job = store.update("jobs", jid, status="queued")
    return job


def _data_file(store: Store, project: str, fid, param: str, *, required: bool, method: str) -> dict | None:
    code = f"invalid_{param}"
    if fid is None and not required:
        return None
    if not isinstance(fid, str) or not fid:
        raise invalid(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    f = store.get("files", fid, project=project)
    if f is None:
        raise invalid(f"File '{fid}' not found.", param, code)
    if f["purpose"] != "fine-tune":
        raise invalid(f"File '{fid}' has purpose '{f['purpose']}'; upload it with purpose 'fine-tune'.", param, code)
    if f["status"] != "processed":
        raise invalid(f"File '{fid}' is not a valid training file: {f.get('status_details') or f['status']}",
                      param, code)
    _check_kind(store, f, param, method)
    if param == "training_file" and f["_examples"] < files.MIN_EXAMPLES:
        raise invalid(f"Training file has {f['_examples']} example(s), but must have at least "
                      f"{files.MIN_EXAMPLES} examples", param, "invalid_n_examples")
    return f


_KIND_WORDS = {"chat": "supervised examples ('messages', 'prompt'/'completion', ...)",
               "text": "raw text ('text')",
               "preference": "preference pairs ('input', 'preferred_output', 'non_preferred_output')"}


def _check_kind(store: Store, f: dict, param: str, method: str) -> None:
    """A dpo job trains on preference pairs, a supervised one on anything else: a file of the
    other kind is a 400 naming its first line, the fields the method needs, and the fix."""
    kind = f.get("_kind")
    if kind is None:  # a file checked before the service recorded kinds: look at its first line
        from tailor.data.formats import peek_kind

        path = store.blob_path("files", f["id"])
        kind = (peek_kind(path) if path else None) or "chat"
    needs = METHODS[method][1]
    if kind in needs:
        return
    if method == "reinforcement":
        fix = ("every line needs 'messages' ending with a user turn (the model's reply is sampled and graded), and "
               "the keys the grader reads")
        other = "use method 'dpo' for it" if kind == "preference" else "use method 'supervised' for it"
    elif method == "dpo":
        fix = ("every line needs 'input' ({\"messages\": [...]}), 'preferred_output' and 'non_preferred_output' (one "
               "assistant message each), or 'prompt', 'chosen' and 'rejected'")
        other = "use method 'supervised' for it"
    else:
        fix = "give conversations ('messages'), prompt/completion pairs or raw text ('text')"
        other = "use method 'dpo' for it"
    raise invalid(f"File '{f['id']}' is not {method} data: line 1 holds {_KIND_WORDS[kind]}; {fix}, or {other}.",
                  param, f"invalid_{param}")


def _hyperparameters(req: dict) -> tuple[str, dict]:
    """(method type, its hyperparameters as given: numbers or "auto")."""
    method = req.get("method") or {"type": "supervised"}
    if not isinstance(method, dict):
        raise invalid("'method' must be an object like {\"type\": \"supervised\"}.", "method")
    kind = method.get("type", "supervised")
    if kind not in METHODS:
        raise invalid(f"Unknown fine-tuning method '{kind}'; use 'supervised', 'dpo' or 'reinforcement'.",
                      "method.type")
    bounds = METHODS[kind][0]
    body = method.get(kind) or {}
    if not isinstance(body, dict):
        raise invalid(f"'method.{kind}' must be an object.", f"method.{kind}")
    given = body.get("hyperparameters") or {}
    legacy = req.get("hyperparameters") or {}
    if given and legacy:
        raise invalid(f"Give hyperparameters once: in method.{kind}.hyperparameters (or the older "
                      "top-level 'hyperparameters'), not both.", "hyperparameters")
    given, where = (given, f"method.{kind}.hyperparameters") if given else (legacy, "hyperparameters")
    if not isinstance(given, dict):
        raise invalid(f"'{where}' must be an object.", where)
    unknown = sorted(set(given) - set(bounds))
    if unknown:
        raise invalid(f"Unknown hyperparameter(s): {', '.join(unknown)}.", f"{where}.{unknown[0]}")
    out = {}
    for name, bound in bounds.items():
        if isinstance(bound[0], str):  # words: OpenAI's reasoning_effort
            value = given.get(name, bound[0])
            if value not in bound:
                raise invalid(f"Invalid {name}: {value!r}; give one of {', '.join(bound)}.", f"{where}.{name}")
            out[name] = value
            continue
        kind_, lo, hi = bound
        value = given.get(name, "auto")
        ok = value == "auto" or (isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi
                                 and (kind_ is float or float(value).is_integer()))
        if not ok:
            raise invalid(f"Invalid {name}: {value!r}; give \"auto\" or a number from {lo:g} to {hi:g}.",
                          f"{where}.{name}")
        out[name] = value if value == "auto" else kind_(value)
    return kind, out


def _auto_epochs(n: int) -> int:
    from tailor.data.report import auto_epochs

    return auto_epochs(n)


def _suffix(value) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _SUFFIX.match(value):
        raise invalid("Invalid suffix: use 1 to 64 letters, digits, '.', '_' or '-'.", "suffix")
    return value


def _seed(value) -> int:
    if value is None:
        return random.randint(0, 2147483647)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2147483647:
        raise invalid(f"Invalid seed {value!r}; give an integer from 0 to 2147483647.", "seed")
    return value


def _metadata(value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 16:
        raise invalid("Invalid metadata: give at most 16 key-value pairs.", "metadata")
    for k, v in value.items():
        if not isinstance(v, str) or len(k) > 64 or len(v) > 512:
            raise invalid(f"Invalid metadata['{k}']: keys up to 64 characters, string values up to 512.", "metadata")
    return dict(value)


def _train_config(ref: str, knobs, resolved: dict, seed: int, policy: tenancy.Policy, project: str,
                  method: str = "supervised", reward: dict | None = None) -> dict:
    """The TrainConfig (as a dict) this job runs: the `tailor` object's knobs (a tenant's, so
    within the operator's allowlist and bounds), then the job's own."""
    from tailor import config
    from tailor.errors import TailorError
    from tailor.train.config import METHOD_DEFAULTS, TrainConfig, resolve

    knobs = knobs or {}
    if not isinstance(knobs, dict):
        raise invalid("'tailor' must be an object of tailor train settings, e.g. {\"method\": \"lora\"}.", "tailor")
    reserved = {**_RESERVED, **_METHOD_RESERVED.get(method, {})}
    for key in knobs:
        if key.replace("-", "_") in reserved:
            where = reserved[key.replace("-", "_")]
            raise invalid(f"tailor.{key} is set by the job itself" + (f"; use '{where}'." if where else "."),
                          f"tailor.{key}")
    tenancy.check_options(knobs, policy, project)
    try:
        cfg = config.build(TrainConfig, knobs)
    except TailorError as exc:
        raise invalid(str(exc), "tailor") from exc
    given_length = any(k.replace("-", "_") == "max_length" for k in knobs)
    tenancy.check_bounds(cfg, knobs, policy, _context(ref) if given_length else None)
    rft = reinforcement.train_settings(cfg, resolved, reward, policy) if method == "reinforcement" else {}
    try:
        lr = METHOD_DEFAULTS[cfg.method]["lr"] * resolved["learning_rate_multiplier"]
        own = {"model": ref, "epochs": resolved["n_epochs"], "seed": seed, "batch_size": resolved["batch_size"],
               "lr": lr, "data": "-"}  # data: the worker gives the job's own copy of the file
        if method == "dpo":
            own.update(objective="dpo", beta=resolved["beta"])
        own.update(rft)
        cfg = config.build(TrainConfig, {"keep_checkpoints": min(KEEP_CHECKPOINTS, policy.max_keep_checkpoints)},
                           knobs, own)
        resolve(cfg)
    except TailorError as exc:
        raise invalid(str(exc), "tailor") from exc
    return config.to_dict(cfg)


def _context(ref: str) -> int | None:
    """The model's context length from its config.json (None when it does not say)."""
    import json

    from tailor import models

    try:
        src = models.resolve(ref)
        if src.kind == "hub":  # the cached config only: a request never starts a download
            from huggingface_hub import try_to_load_from_cache

            path = Path(str(try_to_load_from_cache(ref, "config.json")))
        else:
            path = models.local_folder(models.adapter_base(src.path) if src.kind == "adapter" else ref) / "config.json"
        cfg = json.loads(path.read_text())
    except Exception:  # noqa: BLE001 - a hub model not downloaded yet: the run checks its lengths itself
        return None
    cfg = cfg.get("text_config", cfg)
    return cfg.get("max_position_embeddings") or cfg.get("n_positions")


# ---- reading and changing jobs ---------------------------------------------------------------


def get(store: Store, project: str, jid: str) -> dict:
    job = store.get("jobs", jid, project=project)
    if job is None:
        raise not_found("fine-tuning job", jid, "fine_tuning_job_id")
    return job


def listing(store: Store, project: str, *, after: str | None, limit: int, metadata: dict | None = None) -> dict:
    _check_limit(limit)
    where = {f"metadata.{k}": v for k, v in (metadata or {}).items()}
    rows, more = store.page("jobs", project=project, after=after, limit=limit, where=where)
    return files.page([public(r) for r in rows], more)


def cancel(store: Store, project: str, jid: str) -> dict:
    """A queued or paused job is cancelled at once; a running one is asked to stop (the worker signals its
    process, which stops at a step boundary)."""
    with store.transaction():
        job = get(store, project, jid)
        if job["status"] in FINAL:
            raise ServiceError(f"Job {jid} has already {job['status']}; only a queued or running job can be "
                               "cancelled.", kind="invalid", param="fine_tuning_job_id", code="invalid_state")
        if job["status"] == "running":
            return store.update("jobs", jid, _cancel=True)
        event(store, job, "Fine-tuning job cancelled")  # queued or paused: no process to stop
        return store.update("jobs", jid, status="cancelled", finished_at=int(time.time()))


def pause(store: Store, project: str, jid: str) -> dict:
    """A running job is asked to stop (its process saves a checkpoint and exits; then `paused`);
    a queued one is paused at once. `resume` queues it again, to continue where it stopped."""
    with store.transaction():
        job = get(store, project, jid)
        if job["status"] == "running":
            return store.update("jobs", jid, _pause=True)
        _expect(job, "queued", "paused")
        event(store, job, "Fine-tuning job paused")
        return store.update("jobs", jid, status="paused")


def resume(store: Store, project: str, jid: str) -> dict:
    with store.transaction():
        job = get(store, project, jid)
        _expect(job, "paused", "resumed")
        event(store, job, "Fine-tuning job resumed")
        return store.update("jobs", jid, status="queued")


def _expect(job: dict, status: str, verb: str) -> None:
    if job["status"] != status:
        raise ServiceError(f"Job {job['id']} is {job['status']}; only a {status} job can be {verb}.",
                           kind="invalid", param="fine_tuning_job_id", code="invalid_state")


def event(store: Store, job: dict, message: str, *, level: str = "info", type_: str = "message",
          data: dict | None = None) -> dict:
    body = {"id": new_id("ftevent-"), "object": "fine_tuning.job.event", "created_at": int(time.time()),
            "level": level, "message": message, "data": data, "type": type_}
    return store.put("events", body, project=job["_project"], parent=job["id"])


def events(store: Store, project: str, jid: str, *, after: str | None, limit: int) -> dict:
    get(store, project, jid)
    _check_limit(limit)
    rows, more = store.page("events", parent=jid, after=after, limit=limit)
    return files.page(rows, more)


def checkpoints(store: Store, project: str, jid: str, *, after: str | None, limit: int) -> dict:
    get(store, project, jid)
    _check_limit(limit)
    rows, more = store.page("checkpoints", parent=jid, after=after, limit=limit)
    return files.page([public(r) for r in rows], more)


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= 10000:
        raise invalid(f"Invalid limit {limit}; use 1 to 10000.", "limit")
