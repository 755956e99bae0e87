"""Fixtures of the hardening tests: real selector servers with tight limits, raw
sockets, and a run with known state to compare against."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from selector_service.settings import Settings
from tests.fixtures.servers import ServerThread
from tests.selector_service.conftest import TOKEN, batch

AUTH = {"authorization": f"Bearer {TOKEN}"}


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"host": "127.0.0.1", "grpc_port": 0, "http_port": 0,
                            "auth_tokens": TOKEN, "grace_period_s": 1.0, "worker_threads": 4}
    return Settings(**{**base, **overrides})


@contextlib.contextmanager
def serving(**overrides: Any) -> Iterator[ServerThread]:
    srv = ServerThread(settings(**overrides)).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="package")
def guarded() -> Iterator[ServerThread]:
    """Auth on, small limits and short timeouts (so the tests that hit them are quick)."""
    with serving(max_body_mb=1, max_small_body_kb=4, header_timeout_s=0.5, body_timeout_s=0.5,
                 max_connections=24, grpc_handshake_timeout_s=0.5, max_tasks_per_run=4,
                 max_runs=3) as srv:
        yield srv


@pytest.fixture
def client(guarded: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=guarded.http_url, headers=AUTH, timeout=10) as http:
        yield http


def make_run(http: httpx.Client, run_id: str, **config: Any) -> dict[str, Any]:
    """A fresh run with one committed selection; returns that answer."""
    http.delete(f"/v1/runs/{run_id}")
    r = http.put(f"/v1/runs/{run_id}", json={"feature_dim": 4, "seed": 1, **config})
    assert r.status_code == 200, r.text
    r = http.post(f"/v1/runs/{run_id}/select", json=batch(f"{run_id}-warm"))
    assert r.status_code == 200, r.text
    return dict(r.json())


def state(http: httpx.Client, run_id: str) -> dict[str, Any]:
    """The run's stored state, without store_epoch (which names where it was read from)."""
    info = http.get(f"/v1/runs/{run_id}").json()
    info.pop("store_epoch", None)
    return dict(info)


def raw_request(port: int, head: bytes, body: bytes = b"", *, wait: float = 5.0) -> bytes:
    """Send `head` (+ `body`) on a new connection; what the server answers until it closes the
    connection or `wait` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(head + body)
        return read_all(sock, wait)


def read_all(sock: socket.socket, wait: float) -> bytes:
    out = b""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:  # reset by the server
            break
        if not chunk:
            break
        out += chunk
    return out


def closed_within(sock: socket.socket, wait: float) -> bool:
    """The server closes the connection within `wait` seconds (nothing more to read)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


def trickle_until_closed(sock: socket.socket, data: bytes, wait_per_byte: float) -> bool:
    """Send `data` a byte at a time, waiting up to `wait_per_byte` after each for the server
    to close the connection: True when it did before all of `data` was sent."""
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return True
        if closed_within(sock, wait_per_byte):
            return True
    return False


def status_of(response: bytes) -> int:
    line = response.split(b"\r\n", 1)[0]
    return int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else 0
