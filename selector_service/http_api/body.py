"""Request bodies: read within a size limit, then decoded by their content type and validated.

Every body is read inside its route (after authentication), never by FastAPI, which would read
and parse it before the route's dependencies run, and turn a parse failure into a 400 without
a field. The size limits are enforced before this by `limits.GuardMiddleware` (413 by
Content-Length, before reading, or as the stream passes the limit); `read_body` checks again.

Select and outcome reports take two content types:

- `application/x-protobuf`: the gRPC API's request message (`SelectChunksRequest`,
  `ReportOutcomesRequest` of protos/pcm/v1/selector.proto), decoded by `pcm_contract.codec` as
  the gRPC server decodes it. This is the form for large batches: the arrays are packed bytes.
- anything else is read as JSON: the models' bodies. The big Select body is parsed by
  `jsonarrays`, which streams its numeric arrays into NumPy; the small bodies by pydantic.

The answer is the matching protobuf message when the request's Accept names
`application/x-protobuf` (before or alongside JSON), else JSON. Errors are always JSON.
`body_schema` keeps the OpenAPI document exact, `add_body_schemas` adds the models to it.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import FastAPI, Request
from google.protobuf.message import DecodeError, Message
from pydantic import BaseModel, ValidationError

from pcm_contract.errors import InvalidArgument, PayloadTooLarge, clip, invalid_from_validation
from pcm_contract.models import SelectRequest
from selector_service.http_api.jsonarrays import parse_select

M = TypeVar("M", bound=BaseModel)
P = TypeVar("P", bound=Message)
REF = "#/components/schemas/{model}"
JSON = "application/json"
PROTOBUF = "application/x-protobuf"


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


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def is_protobuf(request: Request) -> bool:
    """The body is a protobuf message (Content-Type application/x-protobuf)."""
    return _media_type(request.headers.get("content-type", "")) == PROTOBUF


def wants_protobuf(request: Request) -> bool:
    """The answer should be protobuf: Accept names application/x-protobuf with a quality above
    0 and not below JSON's (`application/json`, `application/*` or `*/*`)."""
    proto = json = 0.0
    for item in request.headers.get("accept", "").split(","):
        media, *params = item.split(";")
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.strip().lower()
        if media == PROTOBUF:
            proto = max(proto, quality)
        elif media in (JSON, "application/*", "*/*"):
            json = max(json, quality)
    return proto > 0 and proto >= json


def parse_message(message: type[P], raw: bytes, run_id: str) -> P:
    """Decode a protobuf request body; InvalidArgument (field `body`) if it does not parse,
    (field `run_id`) if it names another run than the path."""
    try:
        msg = message.FromString(raw)
    except Exception as exc:  # DecodeError; any other failure to parse is the input's too
        reason = str(exc).rpartition(": ")[2] if isinstance(exc, DecodeError) else ""
        raise InvalidArgument("body", f"malformed protobuf message: not a "
                                      f"{message.DESCRIPTOR.full_name} "
                                      f"({reason or type(exc).__name__})") from None
    named = getattr(msg, "run_id", "")
    if named and named != run_id:
        raise InvalidArgument("run_id", f"the message names run {clip(named)}, the path "
                                        f"{clip(run_id)}; leave it empty or make them agree")
    return msg


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
    """A JSON Select body, its arrays read into NumPy (see `jsonarrays`); InvalidArgument
    naming the first bad field."""
    if not raw.strip():
        raise InvalidArgument("body", "a JSON object is required")
    value = parse_select(raw)
    try:
        return SelectRequest.model_validate(value)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None


def body_schema(model: type[BaseModel], message: type[Message] | None = None) -> dict[str, Any]:
    """`openapi_extra` declaring `model` as the JSON request body (and `message`, if given, as
    its protobuf form)."""
    content: dict[str, Any] = {JSON: {"schema": {"$ref": REF.format(model=model.__name__)}}}
    if message is not None:
        content[PROTOBUF] = {"schema": {
            "type": "string", "format": "binary",
            "description": f"a {message.DESCRIPTOR.full_name} message"}}
    return {"requestBody": {"required": True, "content": content}}


def protobuf_answer(message: type[Message]) -> dict[int | str, dict[str, Any]]:
    """`responses=` adding the protobuf form of a route's answer (for Accept:
    application/x-protobuf)."""
    return {200: {"content": {PROTOBUF: {"schema": {
        "type": "string", "format": "binary",
        "description": f"a {message.DESCRIPTOR.full_name} message"}}}}}


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
