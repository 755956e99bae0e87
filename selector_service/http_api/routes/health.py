"""`GET /healthz` (process up), `GET /readyz` (store reachable), `GET /metrics`. Never need
auth."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from selector_service.http_api.deps import MetricsDep, ServiceDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "store unreachable or shutting down"}})
async def readyz(request: Request, service: ServiceDep) -> JSONResponse:
    """Ready to serve: the phase-state store answers and the server is not shutting down."""
    if getattr(request.app.state, "draining", False):
        return JSONResponse({"status": "shutting down"}, status_code=503)
    if not await asyncio.to_thread(service.ready):
        return JSONResponse({"status": "store unavailable"}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text exposition of the pcm_* metrics."""
    if metrics is None:
        return Response(b"", media_type="text/plain; version=0.0.4; charset=utf-8")
    return Response(metrics.render(), media_type=metrics.content_type)
