"""Error bodies: every error answers `{"detail": MESSAGE, "code": CODE, "field": FIELD|null}`.

`code` is the gRPC-style name (INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, UNAVAILABLE,
INTERNAL); `field` names the offending field of an INVALID_ARGUMENT (e.g.
`trajectories[3].action_features`, `body` for malformed JSON).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from selector_service.errors import InvalidArgument, PCMError, Unauthenticated
from selector_service.service import field_path

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
    404: _doc("unknown run (code NOT_FOUND)"),
    422: _doc("invalid input; `field` names it (code INVALID_ARGUMENT)"),
    503: _doc("phase-state store unavailable; retrying is safe (code UNAVAILABLE)"),
}


def error_response(status: int, code: str, detail: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code, "field": field}, status_code=status,
                        headers=headers)


def pcm_error_response(exc: PCMError) -> JSONResponse:
    field = exc.field if isinstance(exc, InvalidArgument) else None
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
    return error_response(exc.http_status, exc.grpc_code, str(exc), field, headers)


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


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PCMError, _pcm_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
