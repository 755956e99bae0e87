"""`POST /v1/runs/{run_id}/select`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from pcm_contract.models import SelectRequest, SelectResponse
from selector_service.http_api.body import body_schema, parse_select_body, read_body
from selector_service.http_api.deps import RunIdPath, ServiceDep, SettingsDep, require_auth
from selector_service.http_api.errors import ERROR_RESPONSES
from selector_service.select_threads import in_thread
from selector_service.service import SelectorService

router = APIRouter(prefix="/v1/runs", tags=["select"], dependencies=[Depends(require_auth)],
                   responses=ERROR_RESPONSES)


@router.post("/{run_id}/select", response_model=SelectResponse,
             openapi_extra=body_schema(SelectRequest))
async def select(run_id: RunIdPath, request: Request, service: ServiceDep,
                 settings: SettingsDep) -> Response:
    """Score a rollout batch, update the run's phase state and answer chunk masks and weights.
    Idempotent on request_id: a replay of the same request gets the stored answer and changes
    nothing; the same request_id with a different request is 409."""
    raw = await read_body(request, settings.max_body_bytes)
    executor = getattr(request.app.state, "select_executor", None)
    return await in_thread(executor, _select, service, run_id, raw)


def _select(service: SelectorService, run_id: str, raw: bytes) -> Response:
    answer = service.select(run_id, parse_select_body(raw))
    return Response(answer.model_dump_json(), media_type="application/json")
