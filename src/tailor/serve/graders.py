"""The graders and Evals routes: a thin HTTP shell over tailor.graders and tailor.service's
evals, under the same API-key guard as the rest of /v1.

  POST /v1/fine_tuning/alpha/graders/run        {grader, model_sample, item?} -> run response
  POST /v1/fine_tuning/alpha/graders/validate   {grader} -> {grader}
  POST|GET /v1/evals, GET|POST|DELETE /v1/evals/{id}
  POST|GET /v1/evals/{id}/runs, GET|DELETE /v1/evals/{id}/runs/{run_id}, POST .../{run_id}[/cancel]
  GET /v1/evals/{id}/runs/{run_id}/output_items[/{item_id}]

Model graders and completions runs sample only models the key's project may see (or the
operator's --grader-url endpoint); another project's evals and runs answer 404. Handlers are
plain `def`s: FastAPI runs them on its thread pool, so grading never blocks the event loop."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request

from tailor import graders
from tailor.graders.sandbox import Limits, PythonPool
from tailor.serve.errors import APIError
from tailor.serve.sampler import ServedSampler
from tailor.service import eval_runs, evals
from tailor.service.keys import project

router = APIRouter(prefix="/v1")
evals_router = APIRouter(prefix="/v1/evals")


def install(app: FastAPI, registry, service=None, *, external=None, python_limits: Limits | None = None) -> None:
    """Add the routes; with the fine-tuning service, also the Evals API and its background runner
    (started and stopped with the app). `external`: the operator's ExternalSampler, if any."""
    state = app.state
    state.graders_external = external
    state.python_pool = PythonPool(python_limits)
    state.sampler_for = lambda owner: ServedSampler(registry, owner, external)
    app.include_router(router)
    runner = None
    if service is not None:
        runner = eval_runs.Runner(service.store, state.sampler_for, state.python_pool,
                                  on_run_end=service.webhooks.eval_run_ended)  # eval.run.* webhooks
        state.eval_runner = runner
        app.include_router(evals_router)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a):
        async with inner(a) as s:
            if runner is not None:
                runner.start()
            try:
                yield s
            finally:
                if runner is not None:
                    runner.stop()
                state.python_pool.close()

    app.router.lifespan_context = lifespan


def _ctx(request: Request) -> graders.Context:
    state = request.app.state
    return graders.Context(sampler=state.sampler_for(project(request)), python=state.python_pool,
                           max_source_bytes=state.python_pool.limits.max_source_bytes)


def _check(raw, request: Request, allowed=graders.RUN_TYPES) -> dict:
    try:
        return graders.check(raw, allowed=allowed, path="grader",
                             max_source_bytes=request.app.state.python_pool.limits.max_source_bytes)
    except graders.Invalid as exc:
        raise APIError(400, exc.message, param=exc.param, code="invalid_grader") from None


# ---- graders ---------------------------------------------------------------------------------


@router.post("/fine_tuning/alpha/graders/run")
def run_grader(request: Request, body: dict):
    if "grader" not in body:
        raise APIError(400, "Missing required parameter: 'grader'.", param="grader", code="missing_required_parameter")
    grader = _check(body["grader"], request)
    sample, item = body.get("model_sample"), body.get("item")
    if not isinstance(sample, str):
        raise APIError(400, "model_sample must be a string (the model's output to grade).", param="model_sample")
    if item is not None and not isinstance(item, dict):
        raise APIError(400, "item must be an object (the dataset row).", param="item")
    return graders.run(grader, sample, item, _ctx(request))


@router.post("/fine_tuning/alpha/graders/validate")
def validate_grader(request: Request, body: dict):
    if "grader" not in body:
        raise APIError(400, "Missing required parameter: 'grader'.", param="grader", code="missing_required_parameter")
    return {"grader": _check(body["grader"], request)}


# ---- evals -----------------------------------------------------------------------------------


def _store(request: Request):
    return request.app.state.service.store


def _knows(request: Request):
    return request.app.state.sampler_for(project(request)).knows


@evals_router.post("")
def create_eval(request: Request, body: dict):
    return evals.public(evals.create(_store(request), project(request), body, _knows(request)))


@evals_router.get("")
def list_evals(request: Request, after: str | None = None, limit: int = 20, order: str = "asc",
               order_by: str = "created_at"):
    return evals.listing(_store(request), project(request), after=after, limit=limit, order=order, order_by=order_by)


@evals_router.get("/{eval_id}")
def retrieve_eval(request: Request, eval_id: str):
    return evals.public(evals.get(_store(request), project(request), eval_id))


@evals_router.post("/{eval_id}")
def update_eval(request: Request, eval_id: str, body: dict):
    return evals.public(evals.update(_store(request), project(request), eval_id, body))


@evals_router.delete("/{eval_id}")
def delete_eval(request: Request, eval_id: str):
    return evals.delete(_store(request), project(request), eval_id)


@evals_router.post("/{eval_id}/runs")
def create_run(request: Request, eval_id: str, body: dict):
    run = eval_runs.create(_store(request), project(request), eval_id, body, _knows(request))
    request.app.state.eval_runner.submit(run["id"])
    return eval_runs.public(run)


@evals_router.get("/{eval_id}/runs")
def list_runs(request: Request, eval_id: str, after: str | None = None, limit: int = 20, order: str = "asc",
              status: str | None = None):
    return eval_runs.listing(_store(request), project(request), eval_id, after=after, limit=limit, order=order,
                             status=status)


@evals_router.get("/{eval_id}/runs/{run_id}")
def retrieve_run(request: Request, eval_id: str, run_id: str):
    return eval_runs.public(eval_runs.get(_store(request), project(request), eval_id, run_id))


@evals_router.post("/{eval_id}/runs/{run_id}/cancel")
@evals_router.post("/{eval_id}/runs/{run_id}")  # openai-python before 3.x posts to the run itself
def cancel_run(request: Request, eval_id: str, run_id: str):
    return eval_runs.public(eval_runs.cancel(_store(request), project(request), eval_id, run_id))


@evals_router.delete("/{eval_id}/runs/{run_id}")
def delete_run(request: Request, eval_id: str, run_id: str):
    return eval_runs.delete(_store(request), project(request), eval_id, run_id)


@evals_router.get("/{eval_id}/runs/{run_id}/output_items")
def list_output_items(request: Request, eval_id: str, run_id: str, after: str | None = None, limit: int = 20,
                      order: str = "asc", status: str | None = None):
    return eval_runs.output_items(_store(request), project(request), eval_id, run_id, after=after, limit=limit,
                                  order=order, status=status)


@evals_router.get("/{eval_id}/runs/{run_id}/output_items/{item_id}")
def retrieve_output_item(request: Request, eval_id: str, run_id: str, item_id: str):
    return eval_runs.output_item(_store(request), project(request), eval_id, run_id, item_id)
