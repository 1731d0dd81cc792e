"""The Files and Fine-tuning jobs routes: a thin HTTP shell over tailor.service.Service.

Routes (all under the same API-key guard as the rest of /v1):
  POST /v1/files, GET /v1/files, GET|DELETE /v1/files/{id}, GET /v1/files/{id}/content
  POST /v1/fine_tuning/jobs, GET /v1/fine_tuning/jobs, GET /v1/fine_tuning/jobs/{id},
  POST /v1/fine_tuning/jobs/{id}/cancel|pause|resume, GET .../events, GET .../checkpoints
Every call names the project of the request's API key (the Guard's `request.state.project`):
another project's ids are as unknown as ids that never existed. Handlers are plain `def`s:
FastAPI runs them in its thread pool, so the store's lock and the upload check never block the
event loop that streams chat tokens.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse

from tailor.serve.errors import APIError, envelope
from tailor.service import Service, ServiceError
from tailor.service.keys import project

router = APIRouter(prefix="/v1")
_STATUS = {"invalid": 400, "not_found": 404, "too_large": 413, "rate_limit": 429}


def install(app: FastAPI, service: Service, registry, *, max_uploads: int = 4) -> None:
    """Add the routes, map ServiceError to OpenAI's envelope, and run the service's worker for
    the app's lifetime (inside the app's own lifespan, so models are served first)."""
    # a job may start from a served model only if the requesting project may use it
    service.lookup = lambda model_id, owner: registry.refs.get(model_id) if registry.knows(model_id, owner) else None
    service.worker.publish = lambda ref, model_id, owner: registry.publish(ref, model_id, owned_by=owner,
                                                                           project=owner)
    app.state.service = service
    app.state.uploads_running, app.state.max_uploads = 0, max_uploads
    app.include_router(router)
    app.add_exception_handler(ServiceError, _service_error)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a):
        async with inner(a) as state:
            service.start()
            try:
                yield state
            finally:
                service.stop()

    app.router.lifespan_context = lifespan


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    status = _STATUS.get(exc.kind, 400)
    return JSONResponse(envelope(exc.message, "requests" if status == 429 else "invalid_request_error", exc.param,
                                 exc.code), status_code=status, headers={"Retry-After": "10"} if status == 429 else None)


def _svc(request: Request) -> Service:
    return request.app.state.service


# ---- files -----------------------------------------------------------------------------------


@router.post("/files")
async def create_file(request: Request):
    """The body streams to a temporary file in the store (serve/uploads.py); the data check and
    the store run on a worker thread. At most --max-uploads at once, server-wide."""
    from tailor.serve import uploads

    state = request.app.state
    if state.uploads_running >= state.max_uploads:
        raise APIError(429, f"{state.max_uploads} uploads are already in progress on this server; retry shortly.",
                       type_="requests", code="rate_limit_exceeded", headers={"Retry-After": "2"})
    state.uploads_running += 1
    svc = _svc(request)
    sink, tmp = svc.store.temp_blob()
    try:
        with sink:
            form = uploads.FormStream(request.headers.get("content-type", ""), sink)
            await uploads.stream_into(request, form, run_in_threadpool)
        purpose = form.fields.get("purpose")
        if not purpose:
            raise APIError(400, "Missing required parameter: 'purpose'.", param="purpose",
                           code="missing_required_parameter")
        return await run_in_threadpool(svc.upload, form.filename, purpose, tmp, project(request))  # checks the data
    except uploads.BodyTooLarge as exc:
        raise APIError(413, str(exc), code="request_too_large") from None
    finally:
        state.uploads_running -= 1
        tmp.unlink(missing_ok=True)  # kept files were moved to their id already


@router.get("/files")
def list_files(request: Request, after: str | None = None, limit: int = 10000, order: str = "desc",
               purpose: str | None = None):
    return _svc(request).list_files(project(request), after=after, limit=limit, order=order, purpose=purpose)


@router.get("/files/{file_id}")
def retrieve_file(request: Request, file_id: str):
    return _svc(request).file(file_id, project(request))


@router.delete("/files/{file_id}")
def delete_file(request: Request, file_id: str):
    return _svc(request).delete_file(file_id, project(request))


@router.get("/files/{file_id}/content")
def file_content(request: Request, file_id: str):
    return FileResponse(_svc(request).file_content(file_id, project(request)), media_type="application/octet-stream")


# ---- fine-tuning jobs ------------------------------------------------------------------------


@router.post("/fine_tuning/jobs")
def create_job(request: Request, body: dict):
    return _svc(request).create_job(body, project(request))


@router.get("/fine_tuning/jobs")
def list_jobs(request: Request, after: str | None = None, limit: int = 20):
    metadata = {k[9:-1]: v for k, v in request.query_params.items() if k.startswith("metadata[") and k.endswith("]")}
    return _svc(request).list_jobs(project(request), after=after, limit=limit, metadata=metadata)


@router.get("/fine_tuning/jobs/{job_id}")
def retrieve_job(request: Request, job_id: str):
    return _svc(request).job(job_id, project(request))


@router.post("/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(request: Request, job_id: str):
    return _svc(request).cancel_job(job_id, project(request))


@router.post("/fine_tuning/jobs/{job_id}/pause")
def pause_job(request: Request, job_id: str):
    return _svc(request).pause_job(job_id, project(request))


@router.post("/fine_tuning/jobs/{job_id}/resume")
def resume_job(request: Request, job_id: str):
    return _svc(request).resume_job(job_id, project(request))


@router.get("/fine_tuning/jobs/{job_id}/events")
def list_events(request: Request, job_id: str, after: str | None = None, limit: int = 20):
    return _svc(request).events(job_id, project(request), after=after, limit=limit)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
def list_checkpoints(request: Request, job_id: str, after: str | None = None, limit: int = 10):
    return _svc(request).checkpoints(job_id, project(request), after=after, limit=limit)
