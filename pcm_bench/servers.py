"""Real servers as child processes on free 127.0.0.1 ports, for the benchmarks (and the tests):
redis-server and `pcm-selector serve`.

    with RedisServer() as redis, SelectorProcess(store="redis", redis_url=redis.url) as sel:
        client = connect(sel.grpc_url)          # or sel.http_url
        sel.kill(); sel.start()                 # SIGKILL, then a new process on the same ports

Each server is a context manager: started on enter (returning once it answers), stopped on exit
(its child processes too) with its temp dir removed. `start()` after `stop()` or `kill()` brings
it back on the same port(s) and dir; only a first start moves to other ports when the ones
picked were taken meanwhile. A missing binary raises ServerNotInstalled, whose message names the
Debian package (scripts/test.sh installs them). The servers only the tests start (a Redis
Cluster, Prometheus) are built on these in tests/fixtures/, beside the pytest fixtures
(tests/fixtures/servers.py).
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

HOST = "127.0.0.1"
INSTALL_HINTS = {
    "redis-server": "Debian's `redis-server` package (apt-get install -y redis-server)",
    "redis-cli": "Debian's `redis-tools` package (apt-get install -y redis-tools)",
    "prometheus": "Debian's `prometheus` package (apt-get install -y prometheus, which also "
                  "ships promtool)",
}


class ServerNotInstalled(RuntimeError):
    """A server's binary is not on PATH; the message says which package to install."""


class PortTaken(OSError):
    """The port picked was taken by another process before the server could bind it."""


def find_executable(name: str) -> str:
    """The path of binary `name` (a key of INSTALL_HINTS), or ServerNotInstalled."""
    path = shutil.which(name)
    if path is None:
        raise ServerNotInstalled(f"{name} not found on PATH: install {INSTALL_HINTS[name]}; the "
                                 "project's test command (scripts/test.sh) installs it")
    return path


# ---------------------------------------------------------------------------------------------
# ports, processes, waiting


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


def log_tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log file ("(no log)" when it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.05) -> None:
    """Poll `predicate` every `interval` s until it is true; TimeoutError naming `what` after
    `timeout` s. An exception `predicate` raises ends the wait."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout} s")
        time.sleep(interval)


class Started(abc.ABC):
    """A context manager over `start()` and `close()`: started on enter (closed should the
    start fail), closed on exit."""

    @abc.abstractmethod
    def start(self, timeout: float | None = None) -> Self: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class ServerProcess(Started):
    """One server as a child process, its output in `log_path` under `dir` (a temp dir this
    object removes at `close()`, unless it was given).

    A subclass names its binary's `command()`, how it tells it is up (`_is_ready`, which may
    raise PortTaken) and how it picks new ports (`_pick_ports`)."""

    name = "server"
    poll_interval_s = 0.05
    start_timeout_s = 30.0

    def __init__(self, directory: str | os.PathLike[str] | None, *, ports_fixed: bool) -> None:
        self._own_dir = directory is None
        self.dir = Path(tempfile.mkdtemp(prefix=f"pcm-{self.name}-") if directory is None
                        else directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._ports_fixed = ports_fixed
        self._started_once = False

    # -- what a subclass says ---------------------------------------------------------------

    @abc.abstractmethod
    def command(self) -> list[str]: ...

    def environment(self) -> Mapping[str, str] | None:
        """The child's environment (None: this process's)."""
        return None

    @abc.abstractmethod
    def _is_ready(self) -> bool: ...

    @abc.abstractmethod
    def _pick_ports(self) -> None: ...

    def _before_spawn(self) -> None:
        """Files the server reads at start (a config)."""

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self) -> list[int]:
        """The process ids of this process's children (Linux; [] elsewhere or when stopped)."""
        return [] if self.proc is None else child_pids(self.proc.pid)

    def start(self, timeout: float | None = None) -> Self:
        """Spawn and wait until the server answers (`timeout` s, else RuntimeError with its log
        tail). A first start whose ports were taken meanwhile moves to others (5 tries), unless
        the ports were given."""
        if self.is_running():
            return self
        for attempt in range(5):
            try:
                self._launch(self.start_timeout_s if timeout is None else timeout)
                self._started_once = True
                return self
            except PortTaken:
                if self._ports_fixed or self._started_once or attempt == 4:
                    raise
                self._pick_ports()
        return self

    def _launch(self, timeout: float) -> None:
        self._before_spawn()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.environment(),
                                         cwd=self.dir)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def wait_ready(self, timeout: float | None = None) -> None:
        """Until the running server answers; PortTaken or RuntimeError if it exits first."""
        timeout = self.start_timeout_s if timeout is None else timeout

        def ready() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                if "address already in use" in self.log_tail().lower():
                    raise PortTaken(f"{self.name}: port taken:\n{self.log_tail()}")
                raise self._fail(f"{self.name} exited with {code} during startup")
            return self._is_ready()

        try:
            wait_until(ready, timeout, f"{self.name} answering", self.poll_interval_s)
        except TimeoutError as exc:
            raise self._fail(f"{self.name} did not answer within {timeout} s") from exc

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait (SIGKILL after `timeout`, to its children too); the exit status,
        None if it was not started."""
        return self._end(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL, to the process and its children (a selector's workers): no shutdown of any
        kind (Redis does not flush its AOF)."""
        return self._end(signal.SIGKILL, 10.0)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it accepts connections but answers nothing."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop, and remove the dir if this object created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _end(self, sig: signal.Signals, timeout: float) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        children = child_pids(proc.pid) if sig == signal.SIGKILL else []
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # in case it was paused
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

    def log_text(self) -> str:
        """Everything the server wrote (stdout and stderr) so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        """Until `text` appears in the log; RuntimeError should the server exit first."""

        def logged() -> bool:
            if text in self.log_text():
                return True
            if not self.is_running():
                raise self._fail(f"{self.name} is not running, and never logged {text!r}")
            return False

        wait_until(logged, timeout, f"{text!r} in the log of {self.name}", interval=0.02)

    def _fail(self, message: str) -> RuntimeError:
        return RuntimeError(f"{message}; log {self.log_path}:\n{self.log_tail()}")

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"{type(self).__name__}(dir={os.fspath(self.dir)!r}, {state})"


# ---------------------------------------------------------------------------------------------
# Redis


def answers_ping(port: int, timeout: float = 0.2) -> bool:
    """True once the server on `port` answers PING with PONG (not LOADING or refused)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def server_pid(port: int, timeout: float = 0.5) -> int | None:
    """The process id the Redis server on `port` reports (INFO server), or None."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"INFO server\r\n")
            data = b""
            while b"process_id:" not in data or not data.endswith(b"\r\n\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    for line in data.split(b"\r\n"):
        if line.startswith(b"process_id:"):
            return int(line.split(b":", 1)[1])
    return None


class RedisServer(ServerProcess):
    """One redis-server on 127.0.0.1 (no RDB snapshots), restartable on the same port and data
    dir. `appendonly`: AOF persistence under `dir`; `options`: more `--NAME VALUE` settings
    (e.g. {"appendfsync": "everysec"})."""

    name = "redis"
    poll_interval_s = 0.01
    start_timeout_s = 10.0

    def __init__(self, port: int | None = None, data_dir: str | os.PathLike[str] | None = None,
                 *, appendonly: bool = False, options: Mapping[str, str] | None = None,
                 executable: str | None = None) -> None:
        self.executable = executable or find_executable("redis-server")
        super().__init__(data_dir, ports_fixed=port is not None)
        self.port = port or 0
        if port is None:
            self._pick_ports()
        self.appendonly = appendonly
        self.options = dict(options or {})

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int = 0) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    def command(self) -> list[str]:
        argv = [self.executable, "--port", str(self.port), "--bind", HOST, "--dir", str(self.dir),
                "--daemonize", "no", "--protected-mode", "no", "--save", "",
                "--appendonly", "yes" if self.appendonly else "no", "--loglevel", "warning"]
        for name, value in self.options.items():
            argv += [f"--{name}", value]
        return argv

    def _pick_ports(self) -> None:
        self.port = free_port()

    def _is_ready(self) -> bool:
        if not answers_ping(self.port):
            return False
        if self.proc is not None and server_pid(self.port) != self.proc.pid:
            raise PortTaken(f"port {self.port} is taken by another server")
        return True

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, port={self.port})"


# ---------------------------------------------------------------------------------------------
# the selector


class SelectorProcess(ServerProcess):
    """`pcm-selector serve --host 127.0.0.1 --grpc-port P --http-port Q` as a subprocess (run
    as `python -m selector_service.cli`, the console script's module, with this interpreter).

    `env` adds PCM_* variables (e.g. PCM_AUTH_TOKENS); PCM_* variables of this process are not
    inherited. `args`: more `serve` flags (e.g. ("--shutdown-delay-s", "1.5")), which override
    the variables. Ports are picked free once and kept, so `start()` after `stop()` or `kill()`
    brings a new process up on the same urls. `workers`: PCM_WORKERS (1, one process, unless
    asked; 0 is the setting's default, one per core with Redis); with several, `start()` also
    waits until every worker serves.
    """

    name = "selector"
    start_timeout_s = 60.0  # its imports alone take seconds, many more on a busy machine

    def __init__(self, *, store: str = "memory", redis_url: str | None = None,
                 env: Mapping[str, str] | None = None, grpc_port: int | None = None,
                 http_port: int | None = None, log_level: str = "WARNING",
                 grace_period_s: float = 2.0, workers: int = 1, args: Sequence[str] = (),
                 log_dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__(log_dir, ports_fixed=grpc_port is not None or http_port is not None)
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
        self.args = list(args)
        self._up_path = "/readyz"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{HOST}:{self.grpc_port}"

    @property
    def grpc_target(self) -> str:
        """HOST:PORT, what grpc.insecure_channel takes."""
        return f"{HOST}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "selector_service.cli", "serve", "--host", HOST,
                "--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port),
                *self.args]

    def environment(self) -> Mapping[str, str]:
        return self.env

    def start(self, timeout: float | None = None, *, ready: bool = True) -> Self:
        """Spawn and wait until `/readyz` answers 200 (`ready=False`: until `/healthz` does,
        for a selector whose store is down)."""
        self._up_path = "/readyz" if ready else "/healthz"
        return super().start(timeout)

    def wait_up(self, *, ready: bool = True, timeout: float | None = None) -> None:
        """Until the running selector answers `/readyz` (or `/healthz`) with every worker."""
        self._up_path = "/readyz" if ready else "/healthz"
        self.wait_ready(timeout)

    def _pick_ports(self) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()

    def _is_ready(self) -> bool:
        try:
            answered = httpx.get(f"{self.http_url}{self._up_path}", timeout=1.0).status_code
        except httpx.TransportError:
            return False
        return answered == 200 and self._all_workers_listen()

    def _all_workers_listen(self) -> bool:
        """With several workers: each listens on both ports (until then the first ones get
        every connection)."""
        if self.workers <= 1:
            return True
        counts = [listeners(self.grpc_port), listeners(self.http_port)]
        return all(c is None or c >= self.workers for c in counts)

