"""Error bodies: every error answers `{"detail": MESSAGE, "code": CODE, "field": FIELD|null}`.

`code` is the gRPC-style name (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, UNAUTHENTICATED,
DEADLINE_EXCEEDED, UNAVAILABLE, INTERNAL); `field` names the offending field (e.g.
`trajectories[3].action_features`, `body` for a body that does not parse or is too large,
`run_id` / `selection_id` of a NOT_FOUND, `request_id` of an ALREADY_EXISTS). Messages quote
inputs cut short. Answers to a body that was not read to its end close the connection.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from pcm_contract.errors import (
    PayloadTooLarge,
    PCMError,
    RequestTimeout,
    Unauthenticated,
    clip_message,
    field_path,
)

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    detail: str
    code: str
    field: str | None = None


def _doc(description: str) -> dict[str, object]:
    return {"model": ErrorBody, "description": description}


# `responses=` of the authenticated routers (OpenAPI documentation of the error bodies).
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    401: _doc("missing or invalid bearer token (code UNAUTHENTICATED)"),
    404: _doc("unknown run, or unknown selection_id of an outcome report (code NOT_FOUND; "
              "`field` names which)"),
    408: _doc("the body did not arrive within PCM_BODY_TIMEOUT_S (code DEADLINE_EXCEEDED)"),
    409: _doc("the request_id was used for a different request (code ALREADY_EXISTS)"),
    413: _doc("body over the route's size limit (code INVALID_ARGUMENT, field `body`)"),
    422: _doc("invalid input; `field` names it (code INVALID_ARGUMENT)"),
    503: _doc("phase-state store unavailable, or too many connections; retrying is safe "
              "(code UNAVAILABLE)"),
}


def error_response(status: int, code: str, detail: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": clip_message(detail), "code": code, "field": field},
                        status_code=status, headers=headers)


def pcm_error_response(exc: PCMError) -> JSONResponse:
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, PayloadTooLarge | RequestTimeout):
        headers["connection"] = "close"  # the rest of the body is not read
    return error_response(exc.http_status, exc.grpc_code, str(exc), exc.field, headers or None)


async def _pcm_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PCMError)
    return pcm_error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if not errors:
        return error_response(422, "INVALID_ARGUMENT", "invalid request", "body")
    err = errors[0]
    loc = list(err.get("loc", ()))
    if loc and loc[0] in ("body", "path", "query", "header"):
        loc = loc[1:]
    if err.get("type") == "json_invalid" or (loc and isinstance(loc[0], int)):
        loc = []  # a position in malformed JSON, not a field
    field = field_path(loc) or "body"
    return error_response(422, "INVALID_ARGUMENT", f"{field}: {err.get('msg', 'invalid')}", field)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown route 404, wrong method 405) in the same shape; a 405
    lists in `Allow` every method of the path (Starlette names only the first route's)."""
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "NOT_FOUND", 405: "UNIMPLEMENTED"}.get(exc.status_code, "INVALID_ARGUMENT")
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        methods = _documented_methods(request.app, request.url.path)
        if methods:
            headers["Allow"] = ", ".join(methods)
    return error_response(exc.status_code, code, str(exc.detail), None, headers or None)


def _documented_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the OpenAPI document lists for `path`."""
    out: set[str] = set()
    for template, operations in app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            out |= {m.upper() for m in operations}
    return sorted(out)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PCMError, _pcm_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
