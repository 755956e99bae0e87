"""`POST /v1/runs/{run_id}/outcomes`: a JSON `OutcomeReport` or a protobuf
`ReportOutcomesRequest` (Content-Type application/x-protobuf); answers JSON, or protobuf on
Accept (see `body`)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from pcm_contract import codec
from pcm_contract.errors import Conflict, InvalidArgument, NotFound
from pcm_contract.gen.pcm.v1 import selector_pb2 as pb
from pcm_contract.models import OutcomeAck, OutcomeReport
from selector_service.http_api.body import (
    JSON,
    PROTOBUF,
    body_schema,
    is_protobuf,
    parse_body,
    parse_message,
    protobuf_answer,
    read_body,
    wants_protobuf,
)
from selector_service.http_api.deps import (
    MetricsDep,
    RunIdPath,
    ServiceDep,
    SettingsDep,
    require_auth,
)
from selector_service.http_api.errors import ERROR_RESPONSES
from selector_service.service import SelectorService

router = APIRouter(prefix="/v1/runs", tags=["outcomes"], dependencies=[Depends(require_auth)],
                   responses=ERROR_RESPONSES)


@router.post("/{run_id}/outcomes", response_model=OutcomeAck,
             openapi_extra=body_schema(OutcomeReport, pb.ReportOutcomesRequest),
             responses=protobuf_answer(pb.ReportOutcomesResponse))
async def report_outcomes(run_id: RunIdPath, request: Request, service: ServiceDep,
                          settings: SettingsDep, metrics: MetricsDep) -> Response:
    """Report a trained step's outcomes and timings. Idempotent on request_id (409 if it was
    used for a different report); 404 naming selection_id if no selection of the run has it.
    The body is JSON, or the protobuf `pcm.v1.ReportOutcomesRequest` with Content-Type
    application/x-protobuf; the answer is protobuf `pcm.v1.ReportOutcomesResponse` when Accept
    names application/x-protobuf."""
    raw = await read_body(request, settings.max_small_body_bytes)
    try:
        return await asyncio.to_thread(_report, service, run_id, raw, is_protobuf(request),
                                       wants_protobuf(request))
    except (InvalidArgument, NotFound, Conflict):
        if metrics is not None:
            metrics.on_report_rejected(run_id)
        raise


def _report(service: SelectorService, run_id: str, raw: bytes, protobuf_in: bool,
            protobuf_out: bool) -> Response:
    report: OutcomeReport | dict[str, Any]
    if protobuf_in:
        report = codec.outcome_report_from_proto(
            parse_message(pb.ReportOutcomesRequest, raw, run_id))
    else:
        report = parse_body(OutcomeReport, raw)
    ack = service.report_outcomes(run_id, report)
    if protobuf_out:
        return Response(pb.ReportOutcomesResponse(accepted=ack.accepted,
                                                  store_epoch=ack.store_epoch)
                        .SerializeToString(), media_type=PROTOBUF)
    return Response(ack.model_dump_json(), media_type=JSON)
