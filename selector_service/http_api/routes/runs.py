"""`PUT/GET/DELETE /v1/runs/{run_id}`."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request

from pcm_contract.models import DeleteAck, RunConfigBody, RunInfo
from selector_service.http_api.body import body_schema, parse_body, read_body
from selector_service.http_api.deps import RunIdPath, ServiceDep, SettingsDep, require_auth
from selector_service.http_api.errors import ERROR_RESPONSES

router = APIRouter(prefix="/v1/runs", tags=["runs"], dependencies=[Depends(require_auth)],
                   responses=ERROR_RESPONSES)


@router.put("/{run_id}", response_model=RunInfo,
            openapi_extra={"requestBody": {**body_schema(RunConfigBody)["requestBody"],
                                           "required": False}})
async def put_run(run_id: RunIdPath, request: Request, service: ServiceDep,
                  settings: SettingsDep) -> RunInfo:
    """Create a run or update its config; omitted fields keep their stored (or default)
    values. `phases` and `feature_dim` cannot change once the run has state. No body: nothing
    changes (creates the run with the defaults if it does not exist)."""
    raw = await read_body(request, settings.max_small_body_bytes)
    body = parse_body(RunConfigBody, raw if raw.strip() else b"{}")
    return await asyncio.to_thread(service.put_run, run_id, body)


@router.get("/{run_id}", response_model=RunInfo)
async def get_run(run_id: RunIdPath, service: ServiceDep) -> RunInfo:
    """The run's config and per-task state (scores, keep probabilities, counts)."""
    return await asyncio.to_thread(service.get_run, run_id)


@router.delete("/{run_id}", response_model=DeleteAck)
async def delete_run(run_id: RunIdPath, service: ServiceDep) -> DeleteAck:
    """Delete the run with its state, idempotency records and history."""
    return await asyncio.to_thread(service.delete_run, run_id)
