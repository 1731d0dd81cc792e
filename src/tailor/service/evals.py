"""OpenAI's Evals API without HTTP: evals (a data-source config and testing criteria made of
graders) and their runs, kept in the service store and seen only by the project that made them.
Runs are checked here and executed in the background by eval_runs.Runner.

An eval's `data_source_config` is `custom`: an item_schema (JSON Schema) every row's `item` must
match, and include_sample_schema (the runs bring or generate a `sample`). Its testing criteria
are graders (label_model, string_check, text_similarity, python, score_model) with an optional
pass_threshold (required for text_similarity)."""

from __future__ import annotations

import time
import uuid

from tailor import graders
from tailor.service import files
from tailor.service.errors import invalid, not_found
from tailor.service.jobs import _metadata
from tailor.service.store import Store, new_id

SAMPLE_SCHEMA = {"type": "object", "properties": {
    "model": {"type": "string"}, "choices": {"type": "array"}, "output_text": {"type": "string"},
    "output_json": {"type": "object"}, "output_tools": {"type": "array"}}, "required": ["model", "choices"]}


def public(body: dict) -> dict:
    return {k: v for k, v in body.items() if not k.startswith("_")}


def create(store: Store, project: str, req: dict, knows_model=None) -> dict:
    """Check a create request and store the eval. `knows_model(id)` says whether a model grader's
    model can be sampled for this project (None: not checked)."""
    config = _data_source_config(req.get("data_source_config"))
    criteria = _criteria(req.get("testing_criteria"), knows_model)
    name = req.get("name")
    if name is not None and not isinstance(name, str):
        raise invalid("'name' must be a string.", "name")
    now = int(time.time())
    body = {"id": new_id("eval_"), "object": "eval", "name": name or "", "created_at": now,
            "metadata": _metadata(req.get("metadata")), "data_source_config": config,
            "testing_criteria": criteria, "_criteria_ids": [f"{c['name']}-{uuid.uuid4()}" for c in criteria],
            "_item_schema": req["data_source_config"]["item_schema"], "_updated_at": now}
    return store.put("evals", body, project=project)


def _data_source_config(config) -> dict:
    param = "data_source_config"
    if not isinstance(config, dict):
        raise invalid("Missing required parameter: 'data_source_config'.", param, "missing_required_parameter")
    kind = config.get("type")
    if kind != "custom":
        raise invalid(f"data_source_config.type {kind!r} is not supported here; use 'custom' with an item_schema.",
                      f"{param}.type")
    schema = config.get("item_schema")
    if not isinstance(schema, dict):
        raise invalid("Give item_schema as a JSON Schema object.", f"{param}.item_schema")
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise invalid(f"item_schema is not a valid JSON Schema: {exc.message}", f"{param}.item_schema") from None
    with_sample = config.get("include_sample_schema", False)
    if not isinstance(with_sample, bool):
        raise invalid("include_sample_schema must be true or false.", f"{param}.include_sample_schema")
    full = {"type": "object", "properties": {"item": schema}, "required": ["item"]}
    if with_sample:
        full["properties"]["sample"] = SAMPLE_SCHEMA
        full["required"].append("sample")
    return {"type": "custom", "schema": full}


def _criteria(criteria, knows_model) -> list[dict]:
    if not isinstance(criteria, list) or not criteria:
        raise invalid("Give testing_criteria as a non-empty array of graders.", "testing_criteria",
                      "missing_required_parameter")
    out = []
    for i, raw in enumerate(criteria):
        path = f"testing_criteria[{i}]"
        try:
            grader = graders.check(raw, allowed=graders.CRITERIA_TYPES, path=path)
        except graders.Invalid as exc:
            raise invalid(exc.message, exc.param) from None
        threshold = raw.get("pass_threshold") if isinstance(raw, dict) else None
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
                raise invalid("pass_threshold must be a number.", f"{path}.pass_threshold")
            if grader["type"] in ("string_check", "label_model"):
                raise invalid(f"a {grader['type']} criterion passes or fails by itself; leave pass_threshold out.",
                              f"{path}.pass_threshold")
            grader["pass_threshold"] = float(threshold)
        elif grader["type"] == "text_similarity":
            raise invalid("a text_similarity criterion needs a pass_threshold.", f"{path}.pass_threshold",
                          "missing_required_parameter")
        if knows_model is not None and "model" in grader and not knows_model(grader["model"]):
            raise invalid(f"The model `{grader['model']}` does not exist or you do not have access to it.",
                          f"{path}.model", "model_not_found")
        out.append(grader)
    return out


def passed(criterion: dict, reward: float) -> bool:
    """string_check and label_model pass at reward 1; the others at pass_threshold, or without
    one at half their range (0.5; (min + max) / 2 for a score_model's range)."""
    if criterion["type"] in ("string_check", "label_model"):
        return reward >= 1.0
    threshold = criterion.get("pass_threshold")
    if threshold is None:
        lo, hi = criterion.get("range", [0.0, 1.0])
        threshold = (lo + hi) / 2
    return reward >= threshold


def get(store: Store, project: str, eval_id: str) -> dict:
    body = store.get("evals", eval_id, project=project)
    if body is None:
        raise not_found("eval", eval_id, "eval_id")
    return body


def update(store: Store, project: str, eval_id: str, req: dict) -> dict:
    with store.transaction():
        get(store, project, eval_id)
        fields = {"_updated_at": int(time.time())}
        if "name" in req:
            if not isinstance(req["name"], str):
                raise invalid("'name' must be a string.", "name")
            fields["name"] = req["name"]
        if "metadata" in req:
            fields["metadata"] = _metadata(req["metadata"])
        return store.update("evals", eval_id, **fields)


def delete(store: Store, project: str, eval_id: str) -> dict:
    """The eval, its runs and their output items (a running run is asked to stop first)."""
    with store.transaction():
        get(store, project, eval_id)
        for run in store.all("eval_runs", parent=eval_id):
            delete_run_rows(store, run["id"])
        store.delete("evals", eval_id, project=project)
    return {"object": "eval.deleted", "deleted": True, "eval_id": eval_id}


def delete_run_rows(store: Store, run_id: str) -> None:
    for item in store.all("eval_items", parent=run_id):
        store.delete("eval_items", item["id"])
    store.delete("eval_runs", run_id)


def listing(store: Store, project: str, *, after: str | None, limit: int, order: str, order_by: str) -> dict:
    _order(order, limit)
    if order_by not in ("created_at", "updated_at"):
        raise invalid(f"Invalid order_by '{order_by}'; use created_at or updated_at.", "order_by")
    rows, more = store.page("evals", project=project, after=after, limit=limit, newest_first=order == "desc")
    if order_by == "updated_at":
        rows.sort(key=lambda r: r.get("_updated_at", r["created_at"]), reverse=order == "desc")
    return files.page([public(r) for r in rows], more)


def _order(order: str, limit: int) -> None:
    if order not in ("asc", "desc"):
        raise invalid(f"Invalid order '{order}'; use asc or desc.", "order")
    if not 1 <= limit <= 10000:
        raise invalid(f"Invalid limit {limit}; use 1 to 10000.", "limit")
