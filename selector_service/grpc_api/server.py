"""Assembles the grpc.aio server: ChunkSelector, grpc.health.v1.Health, server reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from selector_service.auth import TokenAuth
from selector_service.grpc_api.gen.pcm.v1 import selector_pb2 as pb
from selector_service.grpc_api.gen.pcm.v1 import selector_pb2_grpc as pb_grpc
from selector_service.grpc_api.interceptors import AuthInterceptor, SelectMetricsInterceptor
from selector_service.grpc_api.servicer import ChunkSelectorServicer
from selector_service.metrics import Metrics
from selector_service.service import SelectorService

log = logging.getLogger(__name__)

# "pcm.v1.ChunkSelector"
SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["ChunkSelector"].full_name
HEALTH_POLL_S = 5.0  # how often ChunkSelector's health follows the store's reachability


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    health: grpc_health.aio.HealthServicer
    port: int
    service: SelectorService
    _poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.server.start()
        self._poller = asyncio.get_running_loop().create_task(self._follow_store())

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING from now on (health stays answerable until stop)."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, let in-flight ones finish within `grace` seconds, then stop."""
        await self.enter_graceful_shutdown()
        await self.server.stop(grace)

    async def _follow_store(self) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        while True:
            ready = await asyncio.to_thread(self.service.ready)
            await self.health.set(SERVICE_NAME, serving if ready else not_serving)
            await asyncio.sleep(HEALTH_POLL_S)


def build_grpc_server(service: SelectorService, *, host: str, port: int,
                      metrics: Metrics | None = None, auth: TokenAuth | None = None,
                      max_message_bytes: int = 256 * 1024 * 1024) -> GrpcServer:
    """A bound (not yet started) server; `port` 0 picks a free port (see `.port`)."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if metrics is not None:
        interceptors.append(SelectMetricsInterceptor(metrics))  # outermost: sees auth failures
    if auth is not None and auth.enabled:
        interceptors.append(AuthInterceptor(auth))
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    pb_grpc.add_ChunkSelectorServicer_to_server(ChunkSelectorServicer(service, metrics), server)
    health_servicer = grpc_health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"gRPC server could not bind {address}")
    log.info("gRPC listening on %s:%d", host, bound)
    return GrpcServer(server=server, health=health_servicer, port=bound, service=service)
