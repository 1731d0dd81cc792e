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
_STATUS = {"invalid": 400, "not_found": 404, "too_large": 413}


def install(app: FastAPI, service: Service, registry) -> None:
    """Add the routes, map ServiceError to OpenAI's envelope, and run the service's worker for
    the app's lifetime (inside the app's own lifespan, so models are served first)."""
    service.lookup = lambda model_id: registry.refs.get(model_id)
    service.worker.publish = lambda ref, model_id, owner: registry.add(ref, model_id, owned_by=owner, project=owner)
    app.state.service = service
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
    return JSONResponse(envelope(exc.message, "invalid_request_error", exc.param, exc.code),
                        status_code=_STATUS.get(exc.kind, 400))


def _svc(request: Request) -> Service:
    return request.app.state.service


# ---- files -----------------------------------------------------------------------------------


@router.post("/files")
async def create_file(request: Request):
    # The Guard has already read (and size-checked) the body; Starlette's parser (python-multipart)
    # reads it from there, the file part spooled, the text fields capped at 1 MB each.
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise APIError(400, "Send the file as multipart/form-data with 'file' and 'purpose' fields.", param="file")
    try:
        form = await request.form(max_files=1, max_fields=16, max_part_size=1 << 20)
    except Exception as exc:  # a malformed body: the parser's own words say where
        raise APIError(400, f"The multipart body could not be read: {exc}", param="file") from exc
    upload, purpose = form.get("file"), form.get("purpose")
    if upload is None or isinstance(upload, str):
        raise APIError(400, "Missing required parameter: 'file' (send it as multipart/form-data).", param="file",
                       code="missing_required_parameter")
    if not isinstance(purpose, str) or not purpose:
        raise APIError(400, "Missing required parameter: 'purpose'.", param="purpose",
                       code="missing_required_parameter")
    data = await upload.read()
    return await run_in_threadpool(_svc(request).upload, upload.filename or "file", purpose, data,
                                   project(request))  # checks the data


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
