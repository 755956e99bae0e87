"""`POST /v1/runs/{run_id}/outcomes`."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request

from pcm_contract.errors import Conflict, InvalidArgument, NotFound
from pcm_contract.models import OutcomeAck, OutcomeReport
from selector_service.http_api.body import body_schema, parse_body, read_body
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
             openapi_extra=body_schema(OutcomeReport))
async def report_outcomes(run_id: RunIdPath, request: Request, service: ServiceDep,
                          settings: SettingsDep, metrics: MetricsDep) -> OutcomeAck:
    """Report a trained step's outcomes and timings. Idempotent on request_id (409 if it was
    used for a different report); 404 naming selection_id if no selection of the run has it."""
    raw = await read_body(request, settings.max_small_body_bytes)
    try:
        return await asyncio.to_thread(_report, service, run_id, raw)
    except (InvalidArgument, NotFound, Conflict):
        if metrics is not None:
            metrics.on_report_rejected(run_id)
        raise


def _report(service: SelectorService, run_id: str, raw: bytes) -> OutcomeAck:
    return service.report_outcomes(run_id, parse_body(OutcomeReport, raw))
