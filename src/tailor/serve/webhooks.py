"""A project's webhook endpoints: a thin HTTP shell over tailor.service.webhooks.

  POST   /v1/tailor/webhooks                      {"url": ..., "events": [...]?} -> the endpoint, with
                                                   its signing secret (shown this once)
  GET    /v1/tailor/webhooks                      the project's endpoints (no secrets)
  GET    /v1/tailor/webhooks/{id}
  DELETE /v1/tailor/webhooks/{id}
  GET    /v1/tailor/webhooks/{id}/deliveries       the delivery log: each event, its attempts
Each project sees, and is sent, only its own. Handlers are plain `def`s (FastAPI's thread pool):
creating an endpoint resolves its host.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request

from tailor.service.keys import project
from tailor.service.webhooks import public

router = APIRouter(prefix="/v1/tailor/webhooks")


def install(app: FastAPI) -> None:
    """The routes; they use app.state.service, whose ServiceError handler finetune installs."""
    app.include_router(router)


def _hooks(request: Request):
    return request.app.state.service.webhooks


@router.post("")
def create_endpoint(request: Request, body: dict):
    return _hooks(request).create(project(request), body)


@router.get("")
def list_endpoints(request: Request):
    return _hooks(request).listing(project(request))


@router.get("/{webhook_id}")
def retrieve_endpoint(request: Request, webhook_id: str):
    return public(_hooks(request).endpoint(project(request), webhook_id))


@router.delete("/{webhook_id}")
def delete_endpoint(request: Request, webhook_id: str):
    return _hooks(request).delete(project(request), webhook_id)


@router.get("/{webhook_id}/deliveries")
def list_deliveries(request: Request, webhook_id: str, after: str | None = None, limit: int = 20):
    return _hooks(request).deliveries(project(request), webhook_id, after=after, limit=limit)
