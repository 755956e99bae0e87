"""`PUT/GET/DELETE /v1/runs/{run_id}`."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from selector_service.http_api.deps import ServiceDep, require_auth
from selector_service.http_api.errors import ERROR_RESPONSES
from selector_service.models import DeleteAck, RunConfigBody, RunInfo

router = APIRouter(prefix="/v1/runs", tags=["runs"], dependencies=[Depends(require_auth)],
                   responses=ERROR_RESPONSES)


@router.put("/{run_id}", response_model=RunInfo)
async def put_run(run_id: str, service: ServiceDep,
                  body: RunConfigBody | None = None) -> RunInfo:
    """Create a run or update its config; omitted fields keep their stored (or default)
    values. `phases` and `feature_dim` cannot change once the run has state."""
    return await asyncio.to_thread(service.put_run, run_id, body)


@router.get("/{run_id}", response_model=RunInfo)
async def get_run(run_id: str, service: ServiceDep) -> RunInfo:
    """The run's config and per-task state (scores, keep probabilities, counts)."""
    return await asyncio.to_thread(service.get_run, run_id)


@router.delete("/{run_id}", response_model=DeleteAck)
async def delete_run(run_id: str, service: ServiceDep) -> DeleteAck:
    """Delete the run with its state, idempotency records and history."""
    return await asyncio.to_thread(service.delete_run, run_id)
