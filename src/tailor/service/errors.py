"""The service's own error: what went wrong, in words a client can act on, plus the OpenAI
fields (`param`, `code`). The service knows no HTTP; the server maps `kind` to a status."""

from __future__ import annotations

from tailor.errors import TailorError


class ServiceError(TailorError):
    def __init__(self, message: str, *, kind: str = "invalid", param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.kind, self.param, self.code = message, kind, param, code


def invalid(message: str, param: str | None = None, code: str | None = "invalid_value") -> ServiceError:
    return ServiceError(message, kind="invalid", param=param, code=code)


def not_found(what: str, id_: str, param: str | None = None) -> ServiceError:
    return ServiceError(f"No such {what}: '{id_}'.", kind="not_found", param=param, code=None)


def too_large(message: str) -> ServiceError:
    return ServiceError(message, kind="too_large", param="file", code="file_too_large")


def quota_exceeded(message: str) -> ServiceError:
    return ServiceError(message, kind="invalid", param=None, code="quota_exceeded")


def rate_limited(message: str, param: str | None = None) -> ServiceError:
    """Too much at once for this project (HTTP 429); it may try again once work finishes."""
    return ServiceError(message, kind="rate_limit", param=param, code="rate_limit_exceeded")
