"""One JSON shape for every error the service returns: ``{"error": {"type": ..., "message": ...}}``.

``type`` is a stable, machine-readable word; ``message`` says what went wrong and what to do
next. Library errors map to statuses here, in one place:

=====================  ======  ==================================================
error                  status  type
=====================  ======  ==================================================
InvalidEpisodeError    422     ``invalid_episode``
ConfigError            400     ``bad_request``
NotFoundError          404     ``not_found``
DuplicateIdError       409     ``duplicate_id``
CellTrainingError      422     ``training_failed``
TooManyJobsError       429     ``too_many_requests``: the namespace's training jobs
                               are at the server's limit (with ``Retry-After``)
StoreBusyError         503     ``store_busy`` (with ``Retry-After``)
IntegrityError         500     ``integrity_error``: a stored cell is damaged; the
                               server's data needs repair, not the request
EmbedderError          500     ``embedder_error``
StoreError             500     ``store_error``
=====================  ======  ==================================================
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    CellTrainingError,
    ConfigError,
    DuplicateIdError,
    EmbedderError,
    IntegrityError,
    InvalidEpisodeError,
    NotFoundError,
    RememoryError,
    StoreBusyError,
    StoreError,
)


class TooManyJobsError(StoreBusyError):
    """A namespace already has as many training jobs queued or running as the server allows (HTTP 429)."""

logger = logging.getLogger(__name__)

# Most specific first: IntegrityError is a StoreError, EmbedderMismatchError an EmbedderError,
# TooManyJobsError a StoreBusyError.
_LIBRARY: list[tuple[type[RememoryError], int, str]] = [
    (TooManyJobsError, 429, "too_many_requests"),
    (InvalidEpisodeError, 422, "invalid_episode"),
    (ConfigError, 400, "bad_request"),
    (NotFoundError, 404, "not_found"),
    (DuplicateIdError, 409, "duplicate_id"),
    (CellTrainingError, 422, "training_failed"),
    (StoreBusyError, 503, "store_busy"),
    (IntegrityError, 500, "integrity_error"),
    (EmbedderError, 500, "embedder_error"),
    (StoreError, 500, "store_error"),
]

_HTTP_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    421: "misdirected_request",
    422: "invalid_request",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class ErrorBody(BaseModel):
    type: str = Field(description="Stable machine-readable error kind, e.g. not_found, invalid_request.")
    message: str = Field(description="What went wrong and what to do next.")
    details: list[dict[str, Any]] | None = Field(
        default=None, description="For invalid_request: one entry per rejected field (loc, msg)."
    )


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorBody


def classify(exc: RememoryError) -> tuple[int, str]:
    """The HTTP status and error type for a library error."""
    for cls, status, kind in _LIBRARY:
        if isinstance(exc, cls):
            return status, kind
    return 500, "internal_error"


def error_response(
    status: int,
    message: str,
    *,
    type: str | None = None,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A response with the service's error shape."""
    body: dict[str, Any] = {"type": type or _HTTP_TYPES.get(status, "http_error"), "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


class ApiError(StarletteHTTPException):
    """An HTTP error raised by the service itself, with its own error type."""

    def __init__(self, status: int, message: str, *, type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(status, detail=message, headers=headers)
        self.type = type


def _summarise(errors: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    details = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"] or ["body"]
        details.append({"loc": loc, "msg": str(err.get("msg", "invalid"))})
    first = details[0] if details else {"loc": ["body"], "msg": "invalid"}
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return f"Invalid request: {'.'.join(first['loc'])}: {first['msg']}{more}. See the API schema at /docs.", details


def install_error_handlers(app: FastAPI) -> None:
    """Render every error (library, validation, HTTP, unexpected) in the one JSON shape."""

    @app.exception_handler(RememoryError)
    async def _library(request: Request, exc: RememoryError) -> JSONResponse:
        status, kind = classify(exc)
        if status >= 500:
            logger.error("%s on %s %s: %s", type(exc).__name__, request.method, request.url.path, exc)
        headers = {"Retry-After": "1"} if isinstance(exc, StoreBusyError) else None
        return error_response(status, str(exc), type=kind, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = _summarise(list(exc.errors()))
        return error_response(422, message, type="invalid_request", details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"No route {request.method} {request.url.path}. The API is described at /docs and /openapi.json."
        elif exc.status_code == 400 and message == "There was an error parsing the body":
            message = "The request body could not be read: send UTF-8 JSON with `Content-Type: application/json`."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}. See /docs for the allowed methods."
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, message, type=getattr(exc, "type", None), headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("Unexpected error on %s %s", request.method, request.url.path)
        return error_response(
            500, "Internal server error; the server log has the details. Please report it.", type="internal_error"
        )
