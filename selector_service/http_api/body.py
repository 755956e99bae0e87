"""Request bodies: read within a size limit, then validated by the models.

Every body is read inside its route (after authentication), never by FastAPI, which would read
and parse it before the route's dependencies run, and turn a parse failure into a 400 without
a field. The size limits are enforced before this by `limits.GuardMiddleware` (413 by
Content-Length, before reading, or as the stream passes the limit); `read_body` checks again.
The big Select body (a full LIBERO step is ~40 MB of JSON) is parsed by `jsonarrays`, which
reads its numeric arrays straight into NumPy; the small bodies by pydantic in one pass.
`body_schema` keeps the OpenAPI document exact, `add_body_schemas` adds the models to it.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import FastAPI, Request
from pydantic import BaseModel, ValidationError

from pcm_contract.errors import InvalidArgument, PayloadTooLarge, invalid_from_validation
from pcm_contract.models import SelectRequest
from selector_service.http_api.jsonarrays import parse_select

M = TypeVar("M", bound=BaseModel)
REF = "#/components/schemas/{model}"


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413, field `body`) one over `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"{declared} bytes, over the limit of {limit}; split the batch")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"over the limit of {limit} bytes; split the batch")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_body(model: type[M], raw: bytes) -> M:
    """Validate JSON bytes (NaN/Infinity literals are read, then rejected by the model or the
    core); raises InvalidArgument naming the first bad field (`body` for malformed JSON)."""
    if not raw.strip():
        raise InvalidArgument("body", "a JSON object is required")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None


def parse_select_body(raw: bytes) -> SelectRequest:
    """A Select body, its arrays read into NumPy (see `jsonarrays`); InvalidArgument naming the
    first bad field."""
    if not raw.strip():
        raise InvalidArgument("body", "a JSON object is required")
    value = parse_select(raw)
    try:
        return SelectRequest.model_validate(value)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` declaring `model` as the JSON request body."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}}}}


def add_body_schemas(app: FastAPI, *models: type[BaseModel]) -> None:
    """Make app.openapi() include `models` (and the models they use) in its components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            js = model.model_json_schema(ref_template=REF, mode="validation")
            for name, sub in js.pop("$defs", {}).items():
                components.setdefault(name, sub)
            components[model.__name__] = js
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
