"""The only place library errors become HTTP statuses.

Every error body is ``{"error": {"code": str, "message": str}}``; messages come
from the library (written for users) or from here, never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rag.errors import (
    BusyError,
    IndexFormatError,
    InputError,
    ModelError,
    RagError,
    StorageError,
    UnreachableError,
    VectorStoreError,
)

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


class ApiError(Exception):
    """An error decided by the HTTP layer itself (413, 415, 404 on a document, ...)."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class NotReadyError(RagError):
    """The pipeline is still loading (or failed to load)."""


def error_json(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def rag_error_status(exc: RagError) -> tuple[int, str, dict[str, str]]:
    """Status, code and headers for a library error (also used for ``event: error`` in streams)."""
    retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if isinstance(exc, BusyError):
        return 503, "busy", retry
    if isinstance(exc, NotReadyError):
        return 503, "not_ready", retry
    if isinstance(exc, UnreachableError):
        # A model server that is down or restarting: the same request may well work in a moment.
        return 503, "server_unreachable", retry
    if isinstance(exc, InputError):
        return 400, "bad_input", {}
    # The index or a model is missing or broken: the service cannot answer until an operator fixes it.
    if isinstance(exc, IndexFormatError):
        return 503, "index_unavailable", {}
    # Milvus down: nothing the client did, and it may be back soon.
    if isinstance(exc, VectorStoreError):
        return 503, "vector_store_unavailable", retry
    if isinstance(exc, ModelError):
        return 503, "model_unavailable", {}
    if isinstance(exc, StorageError):
        # 507 tells the client that retrying is useless until someone frees space.
        return (507, "disk_full", {}) if exc.disk_full else (503, "storage_unavailable", {})
    return 500, "rag_error", {}


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """One readable line per problem, naming the field.

    >>> describe_validation_errors([{"loc": ("body", "k"), "msg": "Input should be less than or equal to 20"}])
    'k: Input should be less than or equal to 20'
    >>> describe_validation_errors([{"loc": ("body",), "msg": "Field required"}])
    'request body: Field required'
    >>> describe_validation_errors([{"loc": ("body", "query"), "msg": "String should have at most 9 characters"}])
    'query: String should have at most 9 characters'
    """
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        # Only the first element names where the value came from; a field may be called "query" too.
        if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
            loc = loc[1:]
        where = ".".join(loc) if loc else "request body"
        msg = str(err.get("msg", "invalid"))
        if msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts) or "The request is invalid."


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_json(422, "invalid_request", describe_validation_errors(exc.errors()))

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error_json(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RagError)
    async def _rag(request: Request, exc: RagError) -> JSONResponse:
        status, code, headers = rag_error_status(exc)
        if status >= 500 and code == "rag_error":
            log.error("unclassified library error on %s", request.url.path, exc_info=exc)
        return error_json(status, code, str(exc), headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = f"No such route: {request.method} {request.url.path}. See /openapi.json for the routes."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}."
        elif exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's words for a body json.loads cannot take: bad UTF-8, or nested past the recursion limit.
            message = "The request body could not be parsed: send UTF-8 JSON (or multipart for uploads), less nested."
        else:
            message = str(exc.detail)
        return error_json(exc.status_code, code, message, exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # Logged with the traceback for the operator; the client only learns that it was our fault.
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_json(500, "internal", "Internal error; the server log has the details.")
