"""Every error the API returns, and the one place they become JSON.

Body of every error response: ``{"error": {"code": "...", "message": "...", "request_id": "..."}}``
(``request_id`` is the response's ``X-Request-ID``, :mod:`serving.request_id`). Domain errors are
:class:`ServingError` subclasses raised anywhere below the routes; FastAPI's own validation errors
(missing fields, values out of range) and Starlette's HTTP errors (404, 405) go through the same
mapping, so a client never sees another shape. An unexpected exception is logged with its traceback
and answered with a 500 ``internal_error`` that carries no traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import request_id
from serving.routing import allowed_methods

logger = logging.getLogger(__name__)


class ServingError(Exception):
    """An error with an HTTP status, a stable machine-readable code and a message for humans."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class InvalidImage(ServingError):
    """The bytes are not a readable image (truncated, corrupt) or the file is empty."""

    code = "invalid_image"


class EmptyFile(ServingError):
    code = "empty_file"


class UnsupportedImage(ServingError):
    """Not an image at all, or an image format the server does not accept."""

    status_code = 415
    code = "unsupported_media_type"


class ImageTooLarge(ServingError):
    """More pixels than ``max_image_pixels`` (a decompression bomb, or just too big)."""

    status_code = 413
    code = "image_too_large"


class TooManyFiles(ServingError):
    status_code = 413
    code = "too_many_files"


class TooManyPixels(ServingError):
    """The images of one request would decode to more pixels than ``max_request_pixels``."""

    status_code = 413
    code = "too_many_pixels"


class MissingField(ServingError):
    status_code = 422
    code = "missing_field"


class InvalidField(ServingError):
    status_code = 422
    code = "invalid_field"


class LabelsMismatch(ServingError):
    """Support images and labels do not pair up one to one (some class has no image)."""

    status_code = 422
    code = "labels_mismatch"


class SupportSetNotFound(ServingError):
    status_code = 404
    code = "support_set_not_found"


class ModelMismatch(ServingError):
    """A support set made with another model's embeddings."""

    status_code = 409
    code = "model_mismatch"


class Unauthorized(ServingError):
    status_code = 401
    code = "unauthorized"


class QueueFull(ServingError):
    status_code = 429
    code = "queue_full"


class NotReady(ServingError):
    status_code = 503
    code = "not_ready"


class Forbidden(ServingError):
    status_code = 403
    code = "forbidden"


class ReloadFailed(ServingError):
    """The export folder cannot be loaded or warmed up; the model in service stays."""

    status_code = 409
    code = "reload_failed"


class RequestTooLarge(StarletteHTTPException):
    """Raised while the body is being read; an HTTPException so that FastAPI re-raises it as it is."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            detail=f"the request body is larger than the limit of {limit} bytes (CLCE_MAX_UPLOAD_BYTES); "
            "send fewer or smaller images per request",
        )


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
}


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON body of every error response, with the request's ``X-Request-ID`` (``None`` outside one)."""
    identity = request_id.current()
    return {
        "error": {"code": code, "message": message, "request_id": identity.request_id if identity else None}
    }


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def _location(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or "request"


def describe_validation_errors(errors: Sequence[dict[str, Any]]) -> str:
    """One line naming each bad field: ``queries: field required; top_k: must be >= 1``."""
    lines = []
    for err in errors:
        where = _location(err.get("loc", ()))
        msg = str(err.get("msg", "invalid value"))
        if err.get("type") == "missing":
            msg = "field required"
        lines.append(f"{where}: {msg}")
    return "; ".join(lines) or "invalid request"


async def _serving_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServingError)
    return error_response(exc.status_code, exc.code, exc.message, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "validation_error", describe_validation_errors(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    message = str(exc.detail) if exc.detail else code.replace("_", " ")
    headers = getattr(exc, "headers", None)
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"no endpoint at {request.url.path}; see /docs for the API"
    elif exc.status_code == 405:
        allow = ", ".join(allowed_methods(request.app.router.routes, request.scope))
        headers = {**(headers or {}), "Allow": allow}  # every route at the path, not the first one's
        message = (
            f"{request.method} is not allowed on {request.url.path} (allowed: {allow}); see /docs for the API"
        )
    elif exc.status_code == 400 and "parsing the body" in message:
        message = "the request body could not be parsed: send multipart/form-data with the fields in /docs"
    return error_response(exc.status_code, code, message, headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error; the server log has the details")


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to ``{"error": {"code", "message"}}``: the one place where that happens."""
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
