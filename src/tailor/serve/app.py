"""The OpenAI-compatible HTTP API over a Registry of served models.

Routes: GET /health, GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions,
POST /v1/completions. The app only parses, checks and formats; generation is the engine's.
Requests never name files: a model id is looked up in the registry and nothing else.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tailor.serve import chat, completions, dashboard, errors, metrics, webhooks
from tailor.serve.errors import APIError, model_not_found
from tailor.serve.registry import Registry, Unavailable
from tailor.serve.schemas import ChatRequest, CompletionRequest
from tailor.serve.stream import current_project, off_loop
from tailor.service.keys import DEFAULT_PROJECT, Keyring, project

MAX_BODY_BYTES = 4 * 1024 * 1024
_OPEN_PATHS = {"/health", *dashboard.OPEN_PATHS}  # the dashboard's page loads, then asks for the key


@dataclass
class Limits:
    """The most work one request may ask for; past it, a 400 that names the field. (How many
    requests may wait for a slot is the engine's max_queue: past that, a 429.)"""

    max_n: int = 16
    max_prompts: int = 16

    def check(self, n: int, prompts: int = 1) -> None:
        if n > self.max_n:
            raise APIError(400, f"n is {n}; this server returns at most {self.max_n} choices per request.", param="n")
        if prompts > self.max_prompts:
            raise APIError(400, f"The request holds {prompts} prompts; this server accepts at most "
                                f"{self.max_prompts} per request.", param="prompt")


class Guard:
    """ASGI middleware: the bearer key (compared in constant time against every key) and the
    body size limit, checked before FastAPI reads anything. The key's project goes into the
    request's state (`request.state.project`), so routes show each project only its own. The
    body is read here, at most `max_body` bytes, and replayed to the app."""

    def __init__(self, app, api_key: Keyring | None, max_body: int, upload_body: int | None = None):
        self.app, self.keys, self.max_body = app, api_key or Keyring(), max_body
        self.upload_body = upload_body  # POST /v1/files has its own, larger cap (--max-upload-mb)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = _with_header(send, b"x-request-id", errors.new_request_id().encode())
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        owner = self._project(headers) if self.keys else DEFAULT_PROJECT
        if owner is None and scope["path"] not in _OPEN_PATHS:
            return await _reply(send, 401, "Incorrect API key provided. Pass it as 'Authorization: Bearer KEY'.",
                                "invalid_api_key")
        scope.setdefault("state", {})["project"] = owner
        current_project.set(owner)  # seen by the engine's fair share (serve/stream.py)
        upload = bool(self.upload_body) and scope["path"] == "/v1/files" and scope.get("method") == "POST"
        limit = self.upload_body if upload else self.max_body
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return await _reply(send, 413, f"The request body is larger than {limit} bytes.", "request_too_large")
        if upload:  # streamed to disk by the route (serve/uploads.py), never held here
            return await self.app(scope, _counting(receive, limit), send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return await _reply(send, 413, f"The request body is larger than {limit} bytes.",
                                    "request_too_large")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect, as the app expects

        await self.app(scope, replay, send)

    def _project(self, headers: dict) -> str | None:
        value = headers.get("authorization", "")
        token = value[7:].strip() if value[:7].lower() == "bearer " else ""
        return self.keys.project(token)


def _counting(receive, limit: int):
    """`receive` that raises BodyTooLarge once more than `limit` body bytes have arrived."""
    from tailor.serve.uploads import BodyTooLarge

    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message
    return wrapped


def _with_header(send, name: bytes, value: bytes):
    async def wrapped(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (name, value)]}
        await send(message)
    return wrapped


async def _reply(send, status: int, message: str, code: str) -> None:
    body = json.dumps(errors.envelope(message, "invalid_request_error", None, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(registry: Registry, *, api_key: str | Keyring | None = None, max_body: int = MAX_BODY_BYTES,
               service=None, limits: Limits | None = None, max_uploads: int = 4,
               graders_options: dict | None = None, metrics_route: bool = True) -> FastAPI:
    """`api_key`: one key (project `default`), or a Keyring of several, one project each;
    `max_uploads`: file uploads streaming at once, server-wide; `graders_options`:
    tailor.serve.graders.install's keywords (the operator's grader endpoint, python limits);
    `metrics_route`: GET /metrics on this app, behind the key (off when --metrics-port serves it)."""
    limits = limits or Limits()
    keys = Keyring({api_key: DEFAULT_PROJECT}) if isinstance(api_key, str) else api_key or Keyring()

    @asynccontextmanager
    async def lifespan(app):
        registry.start()
        try:
            yield
        finally:  # SIGTERM lands here once uvicorn has drained (or given up on) open requests
            registry.stop()

    app = FastAPI(title="tailor", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    errors.install(app)
    app.add_middleware(Guard, api_key=keys, max_body=max_body,
                       upload_body=service.max_upload_bytes + 65536 if service is not None else None)
    app.state.registry = registry
    if service is not None:  # the Files and Fine-tuning jobs routes (tailor.serve.finetune)
        from tailor.serve import finetune

        finetune.install(app, service, registry, max_uploads=max_uploads)
        webhooks.install(app)  # a project's webhook endpoints, /v1/tailor/webhooks
    dashboard.install(app)  # the web page at / and its /v1/tailor extensions
    metrics.install(app, registry, service, projects=len(keys.projects), route=metrics_route)  # app.state.meter
    from tailor.serve import graders

    graders.install(app, registry, service, **(graders_options or {}))  # graders/run, /v1/evals

    async def served(model_id: str, request: Request):
        owner = project(request)  # another project's ft: model is as unknown as any
        try:  # a published fine-tune loads on first use: seconds, so off the event loop
            m = registry.get(model_id, owner) if registry.loaded(model_id) else await off_loop(
                registry.get, model_id, owner)
        except Unavailable as exc:
            raise APIError(503, f"The model `{model_id}` cannot be loaded right now: {exc}.", type_="server_error",
                           code="model_unavailable", headers={"Retry-After": "5"}) from None
        if m is None:
            raise model_not_found(model_id)
        return m

    @app.get("/health")
    async def health():  # open to anyone: behind a key it tells nothing about what is served
        return {"status": "ok"} if keys else {"status": "ok", "models": list(registry.visible(DEFAULT_PROJECT))}

    @app.get("/v1/models")
    async def list_models(request: Request, after: str | None = None):
        cards = [m.card() for m in registry.visible(project(request)).values()]
        if after is not None:  # the SDK pages with after=<last id>; past the end is an empty page
            ids = [c["id"] for c in cards]
            cards = cards[ids.index(after) + 1:] if after in ids else []
        return {"object": "list", "data": cards, "has_more": False,
                "first_id": cards[0]["id"] if cards else None, "last_id": cards[-1]["id"] if cards else None}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request):
        m = registry.visible(project(request)).get(model_id)  # a card needs no weights
        if m is None:
            raise model_not_found(model_id)
        return m.card()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        model = await served(body.model, request)
        limits.check(body.n)
        if body.stream:
            return StreamingResponse(await off_loop(chat.stream_setup, body, model), media_type="text/event-stream")
        return JSONResponse(await chat.complete(body, model, request))

    @app.post("/v1/completions")
    async def legacy_completions(body: CompletionRequest, request: Request):
        model = await served(body.model, request)
        limits.check(body.n, completions.prompt_count(body))
        if body.stream:
            return StreamingResponse(await off_loop(completions.stream_setup, body, model),
                                     media_type="text/event-stream")
        return JSONResponse(await completions.complete(body, model, request))

    return app
