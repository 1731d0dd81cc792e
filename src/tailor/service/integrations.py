"""A job's `integrations`: OpenAI's `[{"type": "wandb", "wandb": {"project", "name", "entity",
"tags"}}]`, plus the types tensorboard, trackio and mlflow in the same shape. Each becomes the
job's `--report-to` tracker with the given names; credentials, servers and storage are the
operator's (the server's environment: WANDB_API_KEY, MLFLOW_TRACKING_URI, TRACKIO_DIR, ...), never
the request's. A type this server cannot report to (its package or setting is missing) is a 400
naming the integration, before the job is queued."""

from __future__ import annotations

import os
import re

from tailor.service.errors import invalid

TYPES = ("wandb", "tensorboard", "trackio", "mlflow")
FIELDS = ("project", "name", "entity", "tags")
# Names end up in tracker storage (a Trackio project is a file name): no separators, no dots first.
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._ -]{0,127}$")
_TAG = re.compile(r"^[\w./:@+-]{1,64}$")
MAX_TAGS = 50


def parse(value) -> list[dict]:
    """The checked list, as the job object echoes it (every field present, null where not given)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid("'integrations' must be a list like [{\"type\": \"wandb\", \"wandb\": {\"project\": \"p\"}}].",
                      "integrations")
    if len(value) > len(TYPES):
        raise invalid(f"'integrations' holds {len(value)} items; give each type at most once.", "integrations")
    out, seen = [], set()
    for i, item in enumerate(value):
        where = f"integrations[{i}]"
        if not isinstance(item, dict) or item.get("type") not in TYPES:
            raise invalid(f"{where}.type must be one of {', '.join(TYPES)}.", f"{where}.type")
        kind = item["type"]
        if kind in seen:
            raise invalid(f"{where}: the type {kind} is given twice; give it once.", f"{where}.type")
        seen.add(kind)
        extra = sorted(set(item) - {"type", kind})
        if extra:
            raise invalid(f"{where}: unknown field {extra[0]!r} (give 'type' and '{kind}').", f"{where}.{extra[0]}")
        out.append({"type": kind, kind: _settings(item.get(kind), kind, f"{where}.{kind}")})
    _check_server(out)
    return out


def _settings(value, kind: str, where: str) -> dict:
    value = {} if value is None and kind != "wandb" else value
    if not isinstance(value, dict):
        raise invalid(f"{where} must be an object with project, name, entity and tags.", where)
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:  # an api key, a server URL, a folder: the operator's, never the request's
        raise invalid(f"{where}.{unknown[0]} is not accepted; give only {', '.join(FIELDS)} (credentials and "
                      "servers are this server's own).", f"{where}.{unknown[0]}")
    if kind == "wandb" and not value.get("project"):
        raise invalid(f"Missing required parameter: '{where}.project'.", f"{where}.project", "missing_required_parameter")
    for key in ("project", "name", "entity"):
        text = value.get(key)
        if text is not None and (not isinstance(text, str) or not _NAME.match(text)):
            raise invalid(f"Invalid {where}.{key}: use 1 to 128 letters, digits, spaces, '.', '_' or '-' "
                          "(not starting with '.').", f"{where}.{key}")
    tags = value.get("tags")
    if tags is not None and (not isinstance(tags, list) or len(tags) > MAX_TAGS
                             or not all(isinstance(t, str) and _TAG.match(t) for t in tags)):
        raise invalid(f"Invalid {where}.tags: a list of at most {MAX_TAGS} tags of 1 to 64 letters, digits or "
                      "._-/:@+ characters.", f"{where}.tags")
    entity = value.get("entity")
    fixed = os.environ.get("WANDB_ENTITY")
    if kind == "wandb" and entity and fixed and entity != fixed:
        raise invalid(f"{where}.entity: this server reports to the W&B entity its operator set; leave entity out.",
                      f"{where}.entity")
    return {key: value.get(key) for key in FIELDS}


def _check_server(items: list[dict]) -> None:
    from tailor.train import trackers

    for i, item in enumerate(items):
        found = trackers.problems([item["type"]])
        if found:
            raise invalid(f"This server cannot report to {item['type']} (ask its operator): "
                          f"{found[0].split(': ', 1)[-1]}", f"integrations[{i}].type", "integration_unavailable")


def train_settings(items: list[dict], job_id: str, model: str) -> dict:
    """The TrainConfig fields a job's integrations set: its trackers, and the names the first
    integration that gives them chooses (a run is named after its job unless one does)."""
    if not items:
        return {}
    settings = [item[item["type"]] for item in items]

    def first(key):
        return next((s[key] for s in settings if s.get(key)), None)

    tags = list(dict.fromkeys([t for s in settings for t in s.get("tags") or []]
                              + ["tailor/finetune", f"tailor/{model}"[:64], f"tailor/{job_id}"]))
    return {"report_to": [item["type"] for item in items], "run_name": first("name") or job_id,
            "tracker_project": first("project"), "tracker_entity": first("entity"), "tracker_tags": tags}
