"""`POST /v1/runs/{run_id}/select`: a JSON `SelectRequest` or a protobuf `SelectChunksRequest`
(Content-Type application/x-protobuf); answers JSON, or protobuf on Accept (see `body`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from pcm_contract import codec
from pcm_contract.gen.pcm.v1 import selector_pb2 as pb
from pcm_contract.models import SelectRequest, SelectResponse
from selector_service.http_api.body import (
    JSON,
    PROTOBUF,
    body_schema,
    is_protobuf,
    parse_message,
    parse_select_body,
    protobuf_answer,
    read_body,
    wants_protobuf,
)
from selector_service.http_api.deps import RunIdPath, ServiceDep, SettingsDep, require_auth
from selector_service.http_api.errors import ERROR_RESPONSES
from selector_service.select_threads import in_thread
from selector_service.service import SelectorService

router = APIRouter(prefix="/v1/runs", tags=["select"], dependencies=[Depends(require_auth)],
                   responses=ERROR_RESPONSES)


@router.post("/{run_id}/select", response_model=SelectResponse,
             openapi_extra=body_schema(SelectRequest, pb.SelectChunksRequest),
             responses=protobuf_answer(pb.SelectChunksResponse))
async def select(run_id: RunIdPath, request: Request, service: ServiceDep,
                 settings: SettingsDep) -> Response:
    """Score a rollout batch, update the run's phase state and answer chunk masks and weights.
    Idempotent on request_id: a replay of the same request gets the stored answer and changes
    nothing; the same request_id with a different request is 409. The body is JSON, or the
    protobuf `pcm.v1.SelectChunksRequest` with Content-Type application/x-protobuf (its
    run_id empty or the path's); the answer is protobuf `pcm.v1.SelectChunksResponse` when
    Accept names application/x-protobuf."""
    raw = await read_body(request, settings.max_body_bytes)
    executor = getattr(request.app.state, "select_executor", None)
    return await in_thread(executor, _select, service, run_id, raw, is_protobuf(request),
                           wants_protobuf(request))


def _select(service: SelectorService, run_id: str, raw: bytes, protobuf_in: bool,
            protobuf_out: bool) -> Response:
    if protobuf_in:
        msg = parse_message(pb.SelectChunksRequest, raw, run_id)
        answer = service.select_flat(run_id, codec.select_flat_from_proto(msg))
    else:
        answer = service.select(run_id, parse_select_body(raw))
    if protobuf_out:
        return Response(codec.select_response_to_proto(answer).SerializeToString(),
                        media_type=PROTOBUF)
    return Response(answer.model_dump_json(), media_type=JSON)
