"""`pcm-selector serve`: the gRPC and HTTP servers in one process and one event loop.

Both transports call one `SelectorService` over one store. On SIGTERM or SIGINT: gRPC health
turns NOT_SERVING and `/readyz` 503 (for `shutdown_delay_s`, still serving, so load balancers
take the replica out), then both servers refuse new calls, let in-flight ones finish within
`grace_period_s`, and stop; the process exits 0. A second signal cuts the grace short.

With `workers` > 1 (`--workers N`), `pcm-selector serve` (selector_service/cli.py) runs N such
servers as processes on the same ports instead, under a supervisor (selector_service/workers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import prometheus_client
import uvicorn

from selector_service.allocator import keep_large_buffers
from selector_service.auth import TokenAuth
from selector_service.grpc_api import GrpcServer, build_grpc_server
from selector_service.http_api import create_app
from selector_service.http_api.limits import guarded_connections
from selector_service.metrics import Metrics
from selector_service.service import SelectorService
from selector_service.settings import Settings
from selector_service.store import MemoryStore, PhaseStore

log = logging.getLogger(__name__)


def build_store(settings: Settings, metrics: Metrics | None = None) -> PhaseStore:
    """The store PCM_STORE names; the Redis one is imported only when asked for."""
    if settings.store == "redis":
        from selector_service.store.redis_store import RedisStore

        on_error = metrics.on_store_error if metrics is not None else None
        return RedisStore(settings.redis_url, on_error=on_error)
    return MemoryStore()


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: SelectorServer owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound (not yet listening) TCP socket; `reuse_port`: SO_REUSEPORT, so that several
    processes can listen on the port and the kernel spreads new connections over them."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class SelectorServer:
    """Both servers over one application layer; `start()`/`stop()` or `run()` (until a
    signal). Ports 0 pick free ports: read `grpc_port` / `http_port` after start.
    `reuse_port`: both listening sockets get SO_REUSEPORT (a worker of several on the ports)."""

    def __init__(self, settings: Settings, *, service: SelectorService | None = None,
                 metrics: Metrics | None = None, reuse_port: bool = False) -> None:
        self.settings = settings
        self.reuse_port = reuse_port
        self.metrics = metrics if metrics is not None else Metrics.from_settings(settings)
        if service is None:
            service = SelectorService(build_store(settings, self.metrics), self.metrics,
                                      max_staleness=settings.max_staleness)
        self.service = service
        self.auth = TokenAuth(settings.auth_tokens)
        self.app = create_app(service, settings, self.metrics)
        self.grpc: GrpcServer | None = None
        self.http: _Uvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self._stopping: asyncio.Event | None = None
        self._stopped = False
        self.grpc_port = settings.grpc_port
        self.http_port = settings.http_port

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(s.worker_threads,
                                                     thread_name_prefix="pcm-worker"))
        self._stopping = asyncio.Event()
        self._sock = _bind(s.host, s.http_port, reuse_port=self.reuse_port)
        self.http_port = self._sock.getsockname()[1]
        self.grpc = build_grpc_server(self.service, host=s.host, port=s.grpc_port,
                                      metrics=self.metrics, auth=self.auth, settings=s,
                                      reuse_port=self.reuse_port)
        self.grpc_port = self.grpc.port
        await self.grpc.start()
        config = uvicorn.Config(
            self.app, log_config=None, access_log=s.log_level == "DEBUG", lifespan="off",
            ws="none", timeout_graceful_shutdown=max(1, round(s.grace_period_s)),
            server_header=False,
            # h11 with a header timeout and a connection cap (body size and time:
            # GuardMiddleware; see http_api/limits.py)
            http=guarded_connections(s.header_timeout_s, s.max_connections),
            limit_concurrency=s.max_connections, timeout_keep_alive=s.keep_alive_s,
            h11_max_incomplete_event_size=64 * 1024)
        self.http = _Uvicorn(config)
        self._http_task = loop.create_task(self.http.serve(sockets=[self._sock]))
        while not self.http.started:
            if self._http_task.done():
                await self._http_task  # raises what stopped it
                raise RuntimeError("the HTTP server exited during startup")
            await asyncio.sleep(0.01)
        log.info("PCM selector serving gRPC on %s:%d and HTTP on %s:%d (store %s, auth %s)",
                 s.host, self.grpc_port, s.host, self.http_port, s.store,
                 "on" if self.auth.enabled else "off")

    def request_stop(self) -> None:
        """Begin a graceful stop (signal-handler safe); a second request forces it."""
        if self._stopping is None:
            return
        if self._stopping.is_set():
            log.warning("second stop request: cutting the grace period short")
            if self.http is not None:
                self.http.force_exit = True
            if self.grpc is not None:
                asyncio.get_running_loop().create_task(self.grpc.server.stop(0))
            return
        self._stopping.set()

    async def wait(self) -> None:
        """Until a stop is requested (or the HTTP server dies)."""
        assert self._stopping is not None and self._http_task is not None
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({stop, self._http_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()

    async def stop(self) -> None:
        """NOT_SERVING, optional delay, then drain both servers within the grace period."""
        if self._stopped:
            return
        self._stopped = True
        s = self.settings
        log.info("shutting down: draining in-flight calls (grace %.1f s)", s.grace_period_s)
        self.app.state.draining = True
        if self.grpc is not None:
            await self.grpc.enter_graceful_shutdown()
        if s.shutdown_delay_s > 0:
            await asyncio.sleep(s.shutdown_delay_s)
        steps: list[Awaitable[Any]] = []
        if self.grpc is not None:
            steps.append(self.grpc.stop(s.grace_period_s))
        if self.http is not None and self._http_task is not None:
            self.http.should_exit = True
            steps.append(self._http_task)
        results = await asyncio.gather(*steps, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.error("error while stopping: %r", result)
        close = getattr(self.service.store, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()
        log.info("stopped")

    async def run(self, *,
                  signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
                  on_started: Callable[[SelectorServer], None] | None = None) -> None:
        """Serve until one of `signals`, then stop gracefully; `on_started` is called once both
        servers accept calls."""
        signals = tuple(signals)
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in signals:
            loop.add_signal_handler(sig, self.request_stop)
        try:
            if on_started is not None:
                on_started(self)
            await self.wait()
        finally:
            await self.stop()
            for sig in signals:
                loop.remove_signal_handler(sig)


def serve(settings: Settings) -> None:
    """Run the selector in this process until SIGTERM/SIGINT (blocking). With `worker_count`
    > 1, `pcm-selector serve` runs the supervisor of selector_service/workers.py instead, which
    imports this module in each worker: this module never imports that one."""
    prometheus_client.disable_created_metrics()  # no *_created series: this process is ours
    keep_large_buffers()
    asyncio.run(SelectorServer(settings).run())
