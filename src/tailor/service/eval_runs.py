"""Eval runs without HTTP: check a run's data source, keep the run and its output items in the
store, and execute queued runs in the background (Runner), at most `max_runs` at a time.

A run's rows come from `jsonl` (rows that carry their own sample) or `completions` (each row's
messages, rendered from `input_messages`, are answered by a model the project may see). Every
row is graded by every testing criterion through tailor.graders, the one grading path. Status
moves queued -> in_progress -> completed | failed | canceled; `on_run_end(run, project)` is
called once a run ends (the hook a webhook sender uses)."""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from tailor.graders import template
from tailor.service import evals, files
from tailor.service.errors import ServiceError, invalid, not_found
from tailor.service.jobs import _metadata
from tailor.service.store import Store, new_id

log = logging.getLogger(__name__)
FINAL = ("completed", "failed", "canceled")
MAX_ROWS = 10000
ROW_WORKERS = 8  # rows sampled and graded at once: the engine batches their generations
DEFAULT_MAX_TOKENS = 256


def public(body: dict) -> dict:
    return {k: v for k, v in body.items() if not k.startswith("_")}


# ---- creating and reading runs ---------------------------------------------------------------


def create(store: Store, project: str, eval_id: str, req: dict, knows_model=None) -> dict:
    ev = evals.get(store, project, eval_id)
    source = req.get("data_source")
    if not isinstance(source, dict):
        raise invalid("Missing required parameter: 'data_source'.", "data_source", "missing_required_parameter")
    kind = source.get("type")
    if kind not in ("jsonl", "completions"):
        raise invalid(f"data_source.type {kind!r} is not supported here; use 'jsonl' or 'completions'.",
                      "data_source.type")
    rows = _source(store, project, source.get("source"), ev)  # None: a file, read and checked when the run starts
    model = None
    if kind == "completions":
        model = source.get("model")
        if not isinstance(model, str) or not model:
            raise invalid("A completions data source needs 'model'.", "data_source.model",
                          "missing_required_parameter")
        if knows_model is not None and not knows_model(model):
            raise invalid(f"The model `{model}` does not exist or you do not have access to it.",
                          "data_source.model", "model_not_found")
        _input_messages(source.get("input_messages"))
        _sampling(source.get("sampling_params") or {})
    name = req.get("name")
    if name is not None and not isinstance(name, str):
        raise invalid("'name' must be a string.", "name")
    run = {"id": new_id("evalrun_"), "object": "eval.run", "eval_id": eval_id, "name": name or (model or "jsonl"),
           "model": model, "status": "queued", "created_at": int(time.time()), "report_url": f"/#eval={eval_id}",
           "data_source": source, "metadata": _metadata(req.get("metadata")), "error": None,
           "result_counts": {"total": 0, "passed": 0, "failed": 0, "errored": 0},
           "per_testing_criteria_results": None, "per_model_usage": None, "_rows": rows, "_project": project}
    return store.put("eval_runs", run, project=project, parent=eval_id)


def _source(store: Store, project: str, src, ev: dict) -> list[dict] | None:
    param = "data_source.source"
    if not isinstance(src, dict):
        raise invalid("Give data_source.source: {type: file_content, content: [...]} or {type: file_id, id}.", param)
    if src.get("type") == "file_id":
        fid = src.get("id")
        if not isinstance(fid, str) or store.get("files", fid, project=project) is None:
            raise invalid(f"File '{fid}' not found.", f"{param}.id", "invalid_file_id")
        return None
    if src.get("type") != "file_content":
        raise invalid(f"data_source.source.type {src.get('type')!r} is not supported; use file_content or file_id.",
                      f"{param}.type")
    content = src.get("content")
    if not isinstance(content, list) or not content:
        raise invalid("file_content needs a non-empty 'content' array of {item, sample?} rows.", f"{param}.content")
    return [_row(r, ev, f"{param}.content[{i}]") for i, r in enumerate(content)][:MAX_ROWS]


def _row(row, ev: dict, where: str) -> dict:
    """One {item, sample?} row, its item checked against the eval's item_schema."""
    if not isinstance(row, dict) or not isinstance(row.get("item"), dict):
        raise invalid("each row is an object with an 'item' object.", where)
    if row.get("sample") is not None and not isinstance(row["sample"], dict):
        raise invalid("'sample' must be an object.", f"{where}.sample")
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(ev["_item_schema"]).iter_errors(row["item"]))
    if error is not None:
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        raise invalid(f"the item does not match the eval's item_schema: {error.message}", f"{where}.item{path}")
    return {"item": row["item"], "sample": row.get("sample")}


def _input_messages(spec) -> None:
    param = "data_source.input_messages"
    if not isinstance(spec, dict):
        raise invalid("A completions data source needs input_messages: {type: template, template: [...]}.", param,
                      "missing_required_parameter")
    if spec.get("type") == "item_reference":
        ref = spec.get("item_reference")
        if not isinstance(ref, str) or not ref.startswith("item."):
            raise invalid("item_reference names a field of the item, e.g. 'item.messages'.", f"{param}.item_reference")
        return
    if spec.get("type") != "template" or not isinstance(spec.get("template"), list) or not spec["template"]:
        raise invalid("input_messages is {type: template, template: [messages]} or {type: item_reference}.", param)
    for i, m in enumerate(spec["template"]):
        where = f"{param}.template[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in (
                "system", "developer", "user", "assistant"):
            raise invalid("each message is {role: system|developer|user|assistant, content: text}.", where)
        try:
            template.check(m["content"])
        except template.TemplateError as exc:
            raise invalid(str(exc), f"{where}.content") from None


_SAMPLING = {"temperature": (0, 2), "top_p": (0, 1), "seed": (None, None), "max_completion_tokens": (1, None),
             "max_completions_tokens": (1, None)}


def _sampling(params: dict) -> dict:
    if not isinstance(params, dict):
        raise invalid("sampling_params must be an object.", "data_source.sampling_params")
    for key, (lo, hi) in _SAMPLING.items():
        v = params.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (lo is not None and v < lo) or (
                hi is not None and v > hi):
            raise invalid(f"Invalid {key}: {v!r}.", f"data_source.sampling_params.{key}")
    return params


def get(store: Store, project: str, eval_id: str, run_id: str) -> dict:
    evals.get(store, project, eval_id)
    run = store.get("eval_runs", run_id, project=project)
    if run is None or run["eval_id"] != eval_id:
        raise not_found("eval run", run_id, "run_id")
    return run


def listing(store: Store, project: str, eval_id: str, *, after, limit: int, order: str, status) -> dict:
    evals.get(store, project, eval_id)
    evals._order(order, limit)
    if status is not None and status not in ("queued", "in_progress", *FINAL):
        raise invalid(f"Invalid status '{status}'.", "status")
    rows, more = store.page("eval_runs", project=project, parent=eval_id, after=after, limit=limit,
                            newest_first=order == "desc", where={"status": status} if status else None)
    return files.page([public(r) for r in rows], more)


def cancel(store: Store, project: str, eval_id: str, run_id: str) -> dict:
    with store.transaction():
        run = get(store, project, eval_id, run_id)
        if run["status"] in FINAL:
            raise ServiceError(f"Run {run_id} has already {run['status']}; only a queued or in_progress run can be "
                               "canceled.", kind="invalid", param="run_id", code="invalid_state")
        return store.update("eval_runs", run_id, status="canceled", _cancel=True)


def delete(store: Store, project: str, eval_id: str, run_id: str) -> dict:
    with store.transaction():
        get(store, project, eval_id, run_id)
        store.update("eval_runs", run_id, _cancel=True)
        evals.delete_run_rows(store, run_id)
    return {"object": "eval.run.deleted", "deleted": True, "run_id": run_id}


def output_items(store: Store, project: str, eval_id: str, run_id: str, *, after, limit: int, order: str,
                 status) -> dict:
    get(store, project, eval_id, run_id)
    evals._order(order, limit)
    if status is not None and status not in ("pass", "fail"):
        raise invalid(f"Invalid status '{status}'; use pass or fail.", "status")
    rows, more = store.page("eval_items", parent=run_id, after=after, limit=limit, newest_first=order == "desc",
                            where={"status": status} if status else None)
    return files.page(rows, more)


def output_item(store: Store, project: str, eval_id: str, run_id: str, item_id: str) -> dict:
    get(store, project, eval_id, run_id)
    item = store.get("eval_items", item_id, project=project)
    if item is None or item["run_id"] != run_id:
        raise not_found("output item", item_id, "output_item_id")
    return item


# ---- running ---------------------------------------------------------------------------------


class Runner:
    """Runs queued eval runs on background threads. `sampler_for(project)` gives the Sampler of
    the models a project may see; `python` is the pool python graders run through."""

    def __init__(self, store: Store, sampler_for: Callable[[str], object] | None = None, python=None,
                 max_runs: int = 2, on_run_end: Callable[[dict, str], None] | None = None):
        self.store, self.sampler_for, self.python = store, sampler_for, python
        self.on_run_end = on_run_end  # webhook hook point: called with the ended run and its project
        self._pool = ThreadPoolExecutor(max_runs, thread_name_prefix="eval-run")
        self._started: set[str] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        """Queue again what a previous server left unfinished (its partial items are dropped)."""
        for run in self.store.all("eval_runs", where={"status": "in_progress"}):
            for item in self.store.all("eval_items", parent=run["id"]):
                self.store.delete("eval_items", item["id"])
            self.store.update("eval_runs", run["id"], status="queued")
        for run in self.store.all("eval_runs", where={"status": "queued"}):
            self.submit(run["id"])

    def submit(self, run_id: str) -> None:
        with self._lock:
            if run_id not in self._started:
                self._started.add(run_id)
                self._pool.submit(self._run, run_id)

    def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, run_id: str) -> None:
        run = self.store.get("eval_runs", run_id)
        if run is None or run["status"] != "queued":
            return
        project = run["_project"]
        try:
            self.store.update("eval_runs", run_id, status="in_progress")
            from tailor.service.eval_exec import execute

            outcome = execute(self, run)
        except Exception as exc:  # one run fails, the server and other runs go on
            log.exception("eval run %s failed", run_id)
            outcome = {"status": "failed", "error": {"code": "run_failed", "message": _message(exc)}}
        current = self.store.get("eval_runs", run_id)
        if current is None:  # deleted while running
            return
        if current.get("_cancel"):
            outcome["status"] = "canceled"
        final = self.store.update("eval_runs", run_id, **outcome)
        if self.on_run_end is not None:
            try:
                self.on_run_end(public(final), project)
            except Exception:
                log.exception("on_run_end failed for %s", run_id)

    def cancelled(self, run_id: str) -> bool:
        run = self.store.get("eval_runs", run_id)
        return run is None or bool(run.get("_cancel"))


def _message(exc: Exception) -> str:
    """What a client may read: a service error's own words; anything else only its type."""
    return exc.message if isinstance(exc, ServiceError) else f"the run failed ({type(exc).__name__})"


def rows_of(store: Store, run: dict) -> list[dict]:
    """The run's rows: given inline, or read from its file (each line {item, sample?})."""
    if run.get("_rows") is not None:
        return run["_rows"]
    ev = store.get("evals", run["eval_id"])
    fid = run["data_source"]["source"]["id"]
    path = store.blob_path("files", fid, project=run["_project"])
    if path is None:
        raise invalid(f"File '{fid}' no longer exists.", "data_source.source.id")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise invalid(f"{fid} line {n}: not valid JSON ({exc.msg}).", "data_source.source.id") from None
        if isinstance(obj, dict) and "item" not in obj:
            obj = {"item": obj}  # a line of bare items
        rows.append(_row(obj, ev, f"{fid} line {n}"))
        if len(rows) > MAX_ROWS:
            raise invalid(f"{fid} has more than {MAX_ROWS} rows.", "data_source.source.id")
    if not rows:
        raise invalid(f"{fid} has no rows.", "data_source.source.id")
    return rows
