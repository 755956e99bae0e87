"""Launch a real `pcm-selector serve` (and, for the benchmark, a `redis-server`) on free
127.0.0.1 ports, as subprocesses: used by `pcm-bench selector` and, through
tests/selector_process.py, by the integration tests.

    with RedisProcess() as redis, SelectorProcess(store="redis", redis_url=redis.url) as sel:
        client = connect(sel.grpc_url)      # or sel.http_url
        sel.kill(); sel.start()             # SIGKILL, then a fresh process on the same ports
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now (the OS's pick; another process may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def child_pids(pid: int) -> list[int]:
    """The children of process `pid`, from /proc (Linux; [] when it has none or has exited)."""
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            pids.extend(int(p) for p in (task / "children").read_text().split())
    return pids


def listeners(port: int) -> int | None:
    """How many sockets listen on TCP `port` in this network namespace (Linux /proc/net/tcp*;
    None where that is not readable): a port several workers share has one per worker."""
    count, found = 0, False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            fields = line.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN
            if len(fields) > 3 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1],
                                                             16) == port:
                count += 1
    return count if found else None


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Process:
    """A child process with its output in a log file; stop (SIGTERM) or kill (SIGKILL)."""

    def __init__(self, log_dir: str | os.PathLike[str] | None, prefix: str) -> None:
        self._own_dir = log_dir is None
        self.dir = Path(tempfile.mkdtemp(prefix=prefix) if log_dir is None else log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / f"{prefix.strip('-')}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=dict(env or os.environ),
                                         cwd=self.dir)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait (SIGKILL after `timeout`); the exit status, None if not running."""
        return self._end(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL, to the process and its children (a selector's workers): no shutdown of any
        kind."""
        return self._end(signal.SIGKILL, 10.0)

    def children(self) -> list[int]:
        """The process ids of this process's children (Linux; [] elsewhere or when stopped)."""
        return [] if self.proc is None else child_pids(self.proc.pid)

    def _end(self, sig: signal.Signals, timeout: float) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        children = child_pids(proc.pid) if sig == signal.SIGKILL else []
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                children = child_pids(proc.pid)
                proc.kill()
                proc.wait(timeout)
        for pid in children:  # our own children: a SIGKILLed supervisor cannot stop them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return proc.returncode

    def close(self) -> None:
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _fail(self, message: str) -> RuntimeError:
        return RuntimeError(f"{message}; log {self.log_path}:\n{_log_tail(self.log_path)}")


class RedisProcess(_Process):
    """A throwaway `redis-server` (no persistence) on a free port."""

    def __init__(self, port: int | None = None, *, executable: str | None = None,
                 log_dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__(log_dir, "pcm-bench-redis-")
        found = executable or shutil.which("redis-server")
        if found is None:
            raise RuntimeError("redis-server not found on PATH (Debian: apt-get install "
                               "redis-server)")
        self.executable = found
        self.port = port or free_port()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        self._spawn([self.executable, "--port", str(self.port), "--bind", HOST,
                     "--save", "", "--appendonly", "no", "--protected-mode", "no",
                     "--dir", str(self.dir), "--loglevel", "warning"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running():
                raise self._fail(f"redis-server exited on port {self.port}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        self.kill()
        raise self._fail(f"redis-server on port {self.port} did not answer in {timeout} s")

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class SelectorProcess(_Process):
    """`pcm-selector serve --host 127.0.0.1 --grpc-port P --http-port Q` as a subprocess.

    `env` adds PCM_* variables (e.g. PCM_AUTH_TOKENS); PCM_* variables of this process are not
    inherited. Ports are picked free once and kept, so `start()` after `stop()` or `kill()`
    brings a new process up on the same urls. `workers`: PCM_WORKERS (1, one process, unless
    asked; 0 is the setting's default, one per core with Redis); with several, `start()` also
    waits until every worker serves.
    """

    def __init__(self, *, store: str = "memory", redis_url: str | None = None,
                 env: Mapping[str, str] | None = None, grpc_port: int | None = None,
                 http_port: int | None = None, log_level: str = "WARNING",
                 grace_period_s: float = 2.0, workers: int = 1,
                 log_dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__(log_dir, "pcm-selector-")
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PCM_")}
        self.env.update({"PCM_STORE": store, "PCM_LOG_LEVEL": log_level,
                         "PCM_GRACE_PERIOD_S": str(grace_period_s),
                         "PCM_WORKERS": str(workers)})
        if redis_url is not None:
            self.env["PCM_REDIS_URL"] = redis_url
        self.env.update(env or {})
        self.workers = int(self.env["PCM_WORKERS"] or 0)

    @property
    def grpc_url(self) -> str:
        return f"grpc://{HOST}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "selector_service.cli", "serve", "--host", HOST,
                "--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port)]

    def start(self, *, ready: bool = True, timeout: float = 30.0) -> SelectorProcess:
        """Spawn and wait until `/readyz` answers 200 (`ready=False`: until `/healthz` does,
        for a selector whose store is down)."""
        if self.is_running():
            return self
        self._spawn(self.argv(), self.env)
        self.wait_up(ready=ready, timeout=timeout)
        return self

    def wait_up(self, *, ready: bool = True, timeout: float = 30.0) -> None:
        path = "/readyz" if ready else "/healthz"
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.http_url, timeout=1.0) as http:
            while time.monotonic() < deadline:
                if not self.is_running():
                    raise self._fail("pcm-selector exited during startup")
                try:
                    if http.get(path).status_code == 200 and self._all_workers_listen():
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise self._fail(f"pcm-selector did not answer {path} within {timeout} s")

    def _all_workers_listen(self) -> bool:
        """With several workers: each listens on both ports (until then the first ones get
        every connection)."""
        if self.workers <= 1:
            return True
        counts = [listeners(self.grpc_port), listeners(self.http_port)]
        return all(c is None or c >= self.workers for c in counts)

    def __enter__(self) -> SelectorProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
