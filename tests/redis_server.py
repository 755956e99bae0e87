"""Start a real ``redis-server`` for tests: a free 127.0.0.1 port, a temp data dir, stop/restart.

    from tests.redis_server import RedisServer

    with RedisServer() as server:           # started on enter, stopped (dir removed) on exit
        client = redis.Redis.from_url(server.url_for(db=1))

    server = RedisServer(appendonly=True)   # persistence: AOF under server.data_dir
    server.start(); ...; server.stop(); server.start()   # same port, same data dir

Fixtures over it live in tests/conftest.py (``redis_server``, ``redis_url``,
``isolated_redis_server``). A missing ``redis-server`` binary raises RedisServerNotInstalled, which
the fixtures turn into a test failure (never a skip).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

INSTALL_HINT = ("redis-server not found on PATH: install Debian's `redis-server` package "
                "(apt-get install -y redis-server); the project's test command installs it")


class RedisServerNotInstalled(RuntimeError):
    pass


def find_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RedisServerNotInstalled(INSTALL_HINT)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers_ping(port: int, timeout: float = 0.2) -> bool:
    """True once the server on `port` answers PING with PONG (not LOADING or refused)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def server_pid(port: int, timeout: float = 0.5) -> int | None:
    """The process id the server on `port` reports (INFO server), or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
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


class RedisServer:
    """One redis-server process on 127.0.0.1, restartable on the same port and data dir."""

    def __init__(self, port: int | None = None, data_dir: str | Path | None = None, *,
                 appendonly: bool = False, executable: str | None = None) -> None:
        self.executable = executable or find_redis_server()
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self._own_dir = data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="pcm-redis-") if data_dir is None
                             else data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.is_running():
            return self
        for attempt in range(5):
            try:
                self._launch(timeout)
                return self
            except OSError:
                # Another process took the port between free_port() and the bind; pick another
                # unless the port was fixed (a restart must keep its port).
                if self._fixed_port or attempt == 4:
                    raise
                self.port = free_port()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM: Redis flushes its AOF); data dir kept for a restart."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # in case it was paused
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it accepts connections but answers nothing."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop, and remove the data dir if this object created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _command(self) -> list[str]:
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--protected-mode", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--loglevel", "warning",
        ]

    def _launch(self, timeout: float) -> None:
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.data_dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise OSError(f"redis-server exited with {proc.returncode} on port "
                              f"{self.port}:\n{self._log_tail()}")
            if answers_ping(self.port):
                if server_pid(self.port) != proc.pid:  # another server holds the port
                    proc.kill()
                    proc.wait()
                    raise OSError(f"port {self.port} is taken by another server")
                self._proc = proc
                return
            time.sleep(0.01)
        proc.kill()
        proc.wait()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout} s:"
                           f"\n{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"RedisServer(port={self.port}, data_dir={os.fspath(self.data_dir)!r}, {state})"
