"""Assembles the grpc.aio server: ChunkSelector, grpc.health.v1.Health, server reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pcm_contract.gen.pcm.v1 import selector_pb2 as pb
from pcm_contract.gen.pcm.v1 import selector_pb2_grpc as pb_grpc
from selector_service.auth import TokenAuth
from selector_service.grpc_api.interceptors import (
    AuthInterceptor,
    DecodeInterceptor,
    SelectMetricsInterceptor,
)
from selector_service.grpc_api.servicer import ChunkSelectorServicer
from selector_service.metrics import Metrics
from selector_service.service import SelectorService
from selector_service.settings import Settings

log = logging.getLogger(__name__)

# "pcm.v1.ChunkSelector"
SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["ChunkSelector"].full_name
# ChunkSelector's health follows every store call at once (a failed call: NOT_SERVING, the next
# successful one: SERVING); this poll also pings the store when no calls come.
HEALTH_POLL_S = 5.0
MAX_CONNECTION_AGE_GRACE_S = 30.0  # calls in flight when a connection reaches its max age
KEEPALIVE_TIMEOUT_S = 20.0  # a keepalive ping unanswered this long drops the connection


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel arguments of the gRPC server: message size, keepalive, connection age and idle
    limits, handshake timeout and connection cap (see docs/operations.md)."""
    ms = 1000
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", int(settings.grpc_keepalive_s * ms)),
        ("grpc.keepalive_timeout_ms", int(KEEPALIVE_TIMEOUT_S * ms)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_connection_idle_ms", int(settings.grpc_max_connection_idle_s * ms)),
        ("grpc.max_connection_age_ms", int(settings.grpc_max_connection_age_s * ms)),
        ("grpc.max_connection_age_grace_ms", int(MAX_CONNECTION_AGE_GRACE_S * ms)),
        ("grpc.server_handshake_timeout_ms", int(settings.grpc_handshake_timeout_s * ms)),
        ("grpc.max_allowed_incoming_connections", settings.max_connections),
        ("grpc.max_concurrent_streams", 128),
    ]


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    health: grpc_health.aio.HealthServicer
    port: int
    service: SelectorService
    _poller: asyncio.Task[None] | None = None
    _listener: Callable[[bool], None] | None = None

    async def start(self) -> None:
        await self.server.start()
        loop = asyncio.get_running_loop()
        self._poller = loop.create_task(self._follow_store())

        def follow(ready: bool) -> None:  # from a worker thread, on every readiness change
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._set_health, ready)

        self._listener = follow
        self.service.add_readiness_listener(follow)

    def _set_health(self, ready: bool) -> None:
        if self._poller is None:  # shutting down: health stays NOT_SERVING
            return
        status = (health_pb2.HealthCheckResponse.SERVING if ready
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        asyncio.get_running_loop().create_task(self.health.set(SERVICE_NAME, status))

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING from now on (health stays answerable until stop)."""
        if self._listener is not None:
            self.service.remove_readiness_listener(self._listener)
            self._listener = None
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
                      settings: Settings | None = None,
                      reuse_port: bool = False) -> GrpcServer:
    """A bound (not yet started) server; `port` 0 picks a free port (see `.port`).
    `reuse_port`: SO_REUSEPORT on (one of several worker processes on the port)."""
    settings = settings if settings is not None else Settings()
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if metrics is not None:
        interceptors.append(SelectMetricsInterceptor(metrics))  # outermost: sees auth failures
    if auth is not None and auth.enabled:
        interceptors.append(AuthInterceptor(auth))
    interceptors.append(DecodeInterceptor())  # innermost: requests decode in the handler
    options = server_options(settings)
    if reuse_port:
        options.append(("grpc.so_reuseport", 1))
    server = grpc.aio.server(interceptors=interceptors, options=options,
                             maximum_concurrent_rpcs=settings.max_concurrent_rpcs)
    servicer = ChunkSelectorServicer(service, metrics,
                                     inline_chunks=settings.grpc_inline_select_chunks,
                                     select_threads=settings.select_threads)
    pb_grpc.add_ChunkSelectorServicer_to_server(servicer, server)
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
