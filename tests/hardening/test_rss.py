"""Peak RSS of a real `pcm-selector serve` process (default limits) while it rejects 300 MB
bodies, with and without a token: under 300 MB, measured by this test
from /proc/PID/status (VmHWM, the process's peak resident set). About 10 s.
    python -m pytest tests/hardening/test_rss.py -q
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pcm_bench.servers import SelectorProcess
from tests.hardening.conftest import read_all, status_of

TOKEN = "rss-token"
BODY_MB = 300
LIMIT_MB = 300
CHUNK = b"[" * (1024 * 1024)


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise AssertionError("no VmHWM in /proc/PID/status")


@pytest.fixture(scope="module")
def selector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SelectorProcess]:
    proc = SelectorProcess(env={"PCM_AUTH_TOKENS": TOKEN},
                           log_dir=tmp_path_factory.mktemp("rss"))
    with proc:
        yield proc


def _send(port: int, method: str, path: str, *, token: bool, declared: bool) -> int:
    """Send a 300 MB body (declared with Content-Length, or chunked); the status answered.
    Sends until the server answers and closes the connection, or the body is complete."""
    head = [f"{method} {path} HTTP/1.1", "host: selector", "content-type: application/json"]
    if token:
        head.append(f"authorization: Bearer {TOKEN}")
    head.append(f"content-length: {BODY_MB * len(CHUNK)}" if declared
                else "transfer-encoding: chunked")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        frame = CHUNK if declared else f"{len(CHUNK):x}\r\n".encode() + CHUNK + b"\r\n"
        try:
            for _ in range(BODY_MB):
                sock.sendall(frame)
            if not declared:
                sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered early and closed: what we want
            pass
        return status_of(read_all(sock, 30.0))


@pytest.mark.parametrize(("token", "declared", "status"), [
    (False, True, 401), (False, False, 401), (True, True, 413), (True, False, 413)])
def test_peak_rss_stays_under_300_mb_rejecting_a_300_mb_body(
        selector: SelectorProcess, token: bool, declared: bool, status: int) -> None:
    assert selector.pid is not None
    start = time.monotonic()
    for method, path in (("POST", "/v1/runs/rss/select"), ("POST", "/v1/runs/rss/outcomes"),
                         ("PUT", "/v1/runs/rss")):
        got = _send(selector.http_port, method, path, token=token, declared=declared)
        assert got == status, (path, got)
    peak = _peak_rss_mb(selector.pid)
    print(f"peak RSS after {method} {path} token={token} declared={declared}: {peak:.0f} MB")
    assert peak < LIMIT_MB, f"peak RSS {peak:.0f} MB"
    assert time.monotonic() - start < 60
