"""OpenAI's error envelope, and the handlers that put every failure into it: validation
errors become 400 with the offending `param` (never FastAPI's 422 format), unknown routes 404,
anything unexpected 500 without a traceback leaking to the client. Every response carries an
`x-request-id`; server-side failures are logged under it and the client sees only the id."""

from __future__ import annotations

import logging
import uuid
from contextvars import ContextVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)
_request_id: ContextVar[str] = ContextVar("tailor_request_id", default="req_unknown")


def new_request_id() -> str:
    """A fresh id for the HTTP request being handled (set by the app's middleware)."""
    rid = f"req_{uuid.uuid4().hex}"
    _request_id.set(rid)
    return rid


def request_id() -> str:
    return _request_id.get()


def failure_message() -> str:
    """What a client learns of a server-side failure: that it happened, and the id to quote."""
    return f"The server had an error while processing your request (request id {request_id()})."


def server_failure(detail: str) -> str:
    """Log what went wrong under the request id; return what the client may see."""
    log.error("request %s failed: %s", request_id(), detail)
    return failure_message()


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict:
        return envelope(self.message, self.type, self.param, self.code)


def envelope(message: str, type_: str = "invalid_request_error", param: str | None = None,
             code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, **kw) -> JSONResponse:
    return JSONResponse(envelope(message, **kw), status_code=status)


def model_not_found(model_id: str) -> APIError:
    return APIError(404, f"The model `{model_id}` does not exist or you do not have access to it.",
                    param="model", code="model_not_found")


def _param(loc) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    # pydantic names union members (str, list[int], ...) in the location; they are not params
    parts = [p for p in parts if not (p[:1].isalpha() and ("[" in p or p in ("str", "int", "float")))]
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = _param(first.get("loc", ()))
    if first.get("type") == "json_invalid" or param is None and first.get("type") == "missing":
        return error_response(400, "The request body is not valid JSON (or is empty).")
    msg = first.get("msg", "invalid value")
    return error_response(400, f"Invalid value for '{param}': {msg}." if param else f"Invalid request: {msg}.",
                          param=param, code="invalid_value")


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404:
        msg = f"Invalid URL ({request.method} {request.url.path})."
    elif exc.status_code == 405:
        msg = f"Method {request.method} is not allowed on {request.url.path}."
    else:
        msg = str(exc.detail)
    return error_response(exc.status_code, msg, type_="invalid_request_error")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("request %s: unhandled error on %s %s", request_id(), request.method, request.url.path)
    # this handler answers outside the middleware that adds the header, so it adds it itself
    return JSONResponse(envelope(failure_message(), "server_error"), status_code=500,
                        headers={"x-request-id": request_id()})


def install(app) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
