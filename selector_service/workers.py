"""`pcm-selector serve --workers N`: N selector processes on the same gRPC and HTTP ports.

The parent process (`serve_workers`) serves nothing itself. It reserves both ports, makes a
fresh Prometheus multiprocess directory, spawns N workers and supervises them:

- Each worker is a whole `SelectorServer` (gRPC and HTTP, its own event loop, thread pool and
  Redis connections) whose listening sockets have SO_REUSEPORT (gRPC's `grpc.so_reuseport`), so
  the kernel spreads new connections over the workers. A connection stays on its worker: a gRPC
  channel (one HTTP/2 connection) is served by one worker for its life.
- Workers share no memory: they are stateless over the Redis store, whose every write is one
  atomic script (a commit folds into the stored state), exactly as several selector hosts are.
  The memory store cannot be shared, so `Settings` refuses `workers` > 1 with it.
- Metrics: each worker writes its series to mmap files in `PROMETHEUS_MULTIPROC_DIR` (a fresh
  temporary directory per serve, removed when the parent exits), and the worker that answers
  `/metrics` aggregates every worker's files (selector_service/metrics.py).
- SIGTERM or SIGINT: the parent sends SIGTERM to every worker, each drains as a single selector
  does (NOT_SERVING, `shutdown_delay_s`, then in-flight calls finish within `grace_period_s`),
  and the parent exits 0 once all have exited cleanly (1 otherwise; a worker still running
  `STOP_MARGIN_S` after its grace period is killed). A second signal is forwarded too and cuts
  the workers' grace short. Workers ignore SIGINT themselves: a terminal's Ctrl-C reaches the
  whole process group, and the parent forwards it once.
- A worker that fails to start fails the serve (exit 1). One that dies while serving is replaced,
  at most `MAX_RESTARTS` times within `RESTART_WINDOW_S`; beyond that the parent stops the others
  and exits 1, for the supervisor above it (systemd, Docker, Kubernetes) to act.
- Workers get SIGTERM when the parent dies (Linux `PR_SET_PDEATHSIG`), so none outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from selector_service.settings import Settings, configure_logging

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STOP_MARGIN_S = 10.0  # beyond shutdown_delay_s + grace_period_s, before a worker is killed
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
_PR_SET_PDEATHSIG = 1


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    ready: Connection | None  # the parent's end of the readiness pipe, until "ready" came
    started: bool = False

    @property
    def pid(self) -> int | None:
        return self.process.pid


@dataclass
class _Stop:
    """Signals received (written by the handler, read by the supervisor loop)."""

    count: int = 0
    wake_r: int = -1
    wake_w: int = -1
    previous: dict[int, Any] = field(default_factory=dict)


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A bound, never listening SO_REUSEPORT socket on host:port (port 0: a free one): it keeps
    the port for the workers, which bind it with SO_REUSEPORT too. It receives no connections
    (only listening sockets do)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot bind {host}:{port}: {exc.strerror}") from None
    return sock, int(sock.getsockname()[1])


def serve_workers(settings: Settings, count: int) -> int:
    """Run `count` worker processes until SIGTERM/SIGINT; the exit status (0: all drained)."""
    if count < 2:
        raise ValueError("serve_workers needs at least 2 workers")
    if settings.store != "redis":
        raise ValueError("workers need store=redis")
    reserved: list[socket.socket] = []
    try:
        grpc_sock, grpc_port = reserve_port(settings.host, settings.grpc_port)
        reserved.append(grpc_sock)
        http_sock, http_port = reserve_port(settings.host, settings.http_port)
        reserved.append(http_sock)
    except OSError as exc:
        for sock in reserved:
            sock.close()
        log.error("%s", exc.strerror or exc)
        return 1
    worker_settings = settings.model_copy(
        update={"grpc_port": grpc_port, "http_port": http_port, "workers": 1})
    metrics_dir = tempfile.mkdtemp(prefix="pcm-selector-metrics-")
    previous_dir = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = metrics_dir  # inherited by the spawned workers
    try:
        return _Supervisor(worker_settings, count, metrics_dir).run()
    finally:
        for sock in reserved:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        if previous_dir is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous_dir


class _Supervisor:
    def __init__(self, settings: Settings, count: int, metrics_dir: str) -> None:
        self.settings = settings
        self.count = count
        self.metrics_dir = metrics_dir
        self.ctx = multiprocessing.get_context("spawn")
        self.workers: dict[int, _Worker] = {}
        self.stop = _Stop()
        self.restarts: list[float] = []

    # -- lifecycle ----------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        try:
            for index in range(self.count):
                self._spawn(index)
            code = self._supervise()
            return self._drain(code)
        finally:
            self._restore_signals()
            for worker in self.workers.values():  # a failed start: nothing may stay behind
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join(5)

    def _spawn(self, index: int) -> None:
        receive, send = self.ctx.Pipe(duplex=False)
        process = self.ctx.Process(
            target=worker_main, name=f"pcm-selector-worker-{index}",
            args=(self.settings, index, self.count, send, os.getpid()))
        process.start()
        send.close()  # the child holds its end; EOF here once it exits
        self.workers[index] = _Worker(index, process, receive)

    def _supervise(self) -> int:
        """Until a stop signal (0) or an unrecoverable worker failure (1)."""
        announced = False
        while not self.stop.count:
            watched: list[Any] = [self.stop.wake_r]
            for worker in self.workers.values():
                watched.append(worker.process.sentinel)
                if worker.ready is not None:
                    watched.append(worker.ready)
            for ready in wait(watched):
                if ready == self.stop.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.stop.wake_r, 64)
                    continue
                owner = self._worker_of(ready)
                if owner is None:
                    continue
                if ready is owner.ready:
                    self._on_ready(owner)
                elif not owner.process.is_alive() and not self._on_exit(owner):
                    return 1
            if not announced and all(w.started for w in self.workers.values()):
                announced = True
                s = self.settings
                log.info("PCM selector serving gRPC on %s:%d and HTTP on %s:%d with %d workers "
                         "(pids %s; metrics of all workers in %s)", s.host, s.grpc_port, s.host,
                         s.http_port, self.count,
                         " ".join(str(w.pid) for w in self.workers.values()), self.metrics_dir)
        return 0

    def _worker_of(self, handle: Any) -> _Worker | None:
        for worker in self.workers.values():
            if handle is worker.ready or handle == worker.process.sentinel:
                return worker
        return None

    def _on_ready(self, worker: _Worker) -> None:
        assert worker.ready is not None
        try:
            worker.ready.recv()
        except (EOFError, OSError):  # it exited before it was ready: its sentinel says so
            pass
        else:
            worker.started = True
            log.debug("worker %d (pid %s) is serving", worker.index, worker.pid)
        worker.ready.close()
        worker.ready = None

    def _on_exit(self, worker: _Worker) -> bool:
        """A worker exited while serving: replace it (True) or give up (False)."""
        code = worker.process.exitcode
        worker.process.join()
        if worker.ready is not None:
            worker.ready.close()
            worker.ready = None
        if not worker.started:
            log.error("worker %d (pid %s) failed to start (exit status %s): stopping",
                      worker.index, worker.pid, code)
            del self.workers[worker.index]
            return False
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S]
        if len(self.restarts) >= MAX_RESTARTS:
            log.error("worker %d (pid %s) exited (status %s); %d restarts within %.0f s "
                      "already: stopping", worker.index, worker.pid, code, len(self.restarts),
                      RESTART_WINDOW_S)
            del self.workers[worker.index]
            return False
        self.restarts.append(now)
        log.error("worker %d (pid %s) exited (status %s) while serving: starting another",
                  worker.index, worker.pid, code)
        self._spawn(worker.index)
        return True

    def _drain(self, code: int) -> int:
        """SIGTERM every worker, wait for all within their grace; the exit status."""
        s = self.settings
        alive = [w for w in self.workers.values() if w.process.is_alive()]
        log.info("stopping %d workers (grace %.1f s)", len(alive), s.grace_period_s)
        signals_before = self.stop.count
        rounds = 0  # SIGTERMs sent to every worker: one, and one more per further signal
        deadline = time.monotonic() + s.shutdown_delay_s + s.grace_period_s + STOP_MARGIN_S
        while True:
            if rounds < 1 + self.stop.count - signals_before:
                rounds += 1
                for worker in alive:
                    with contextlib.suppress(ProcessLookupError):
                        if worker.process.is_alive() and worker.pid is not None:
                            os.kill(worker.pid, signal.SIGTERM)
                continue
            alive = [w for w in alive if w.process.is_alive()]
            remaining = deadline - time.monotonic()
            if not alive or remaining <= 0:
                break
            woken = wait([self.stop.wake_r, *(w.process.sentinel for w in alive)],
                         timeout=remaining)
            if self.stop.wake_r in woken:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.stop.wake_r, 64)
        for worker in alive:
            log.error("worker %d (pid %s) still running %.0f s after its grace period: killed",
                      worker.index, worker.pid, STOP_MARGIN_S)
            worker.process.kill()
            code = 1
        for worker in self.workers.values():
            worker.process.join(5)
            status = worker.process.exitcode
            # -SIGTERM: the signal came before the worker had installed its handler (it was
            # still starting, so it served nothing).
            if status not in (0, -signal.SIGTERM):
                log.error("worker %d (pid %s) exited with status %s", worker.index,
                          worker.pid, status)
                code = 1
        log.info("stopped")
        return code

    # -- signals ------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        self.stop.wake_r, self.stop.wake_w = os.pipe()
        os.set_blocking(self.stop.wake_r, False)
        os.set_blocking(self.stop.wake_w, False)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.stop.count += 1
            with contextlib.suppress(BlockingIOError):
                os.write(self.stop.wake_w, b"\0")

        for sig in (signal.SIGTERM, signal.SIGINT):
            self.stop.previous[sig] = signal.signal(sig, on_signal)

    def _restore_signals(self) -> None:
        for sig, handler in self.stop.previous.items():
            signal.signal(sig, handler)
        for fd in (self.stop.wake_r, self.stop.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


# ---------------------------------------------------------------------------------------------
# The worker process


def _die_with_parent(parent_pid: int) -> bool:
    """SIGTERM this process when the parent dies (Linux); False if it is already gone."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    return os.getppid() == parent_pid


def worker_main(settings: Settings, index: int, count: int, ready: Connection,
                parent_pid: int) -> None:
    """One worker: a SelectorServer with SO_REUSEPORT sockets and multiprocess metrics, serving
    until SIGTERM. Sends one message on `ready` once it accepts calls."""
    if not _die_with_parent(parent_pid):
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards Ctrl-C as SIGTERM
    configure_logging(settings.log_level, prefix=f"worker-{index}[{os.getpid()}] ")
    # The environment is inherited: PROMETHEUS_MULTIPROC_DIR is set before prometheus_client
    # is first imported (below), which is what switches it to mmap-backed values.
    import prometheus_client

    from selector_service.allocator import keep_large_buffers
    from selector_service.metrics import Metrics
    from selector_service.server import SelectorServer

    prometheus_client.disable_created_metrics()
    keep_large_buffers()
    metrics = Metrics.from_settings(settings, multiprocess_dir=os.environ[MULTIPROC_ENV])
    server = SelectorServer(settings, metrics=metrics, reuse_port=True)

    def started(_: SelectorServer) -> None:
        ready.send(("ready", os.getpid()))
        ready.close()

    asyncio.run(server.run(signals=(signal.SIGTERM,), on_started=started))
