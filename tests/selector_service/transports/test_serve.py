"""`pcm-selector serve` as a real process: comes up on both ports, answers health and
readiness, and on SIGTERM turns gRPC health NOT_SERVING, lets an in-flight call finish and
exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pcm_contract.gen.pcm.v1 import selector_pb2 as pb
from pcm_contract.gen.pcm.v1 import selector_pb2_grpc as pb_grpc
from tests.selector_service.transports.conftest import GRPC_OPTIONS, batch, to_proto

ROOT = Path(__file__).resolve().parents[3]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """`python -m selector_service.cli serve ...` with its stderr collected."""

    def __init__(self, *args: str) -> None:
        self.grpc_port, self.http_port = _free_port(), _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PCM_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "selector_service.cli", "serve",
             "--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port),
             "--host", "127.0.0.1", *args],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.lines)):
            assert time.monotonic() < deadline, f"no {text!r} in the log:\n{self.log}"
            assert self.proc.poll() is None, f"server exited:\n{self.log}"
            time.sleep(0.02)

    def wait_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"server exited early:\n{self.log}"
            try:
                if httpx.get(f"{self.http_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"server not up:\n{self.log}"
            time.sleep(0.1)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    args = getattr(request, "param", ())
    srv = Served("--log-level", "DEBUG", "--grace-period-s", "5", *args)
    try:
        srv.wait_up()
        yield srv
    finally:
        srv.close()


def _big_select(run_id: str, n: int) -> pb.SelectChunksRequest:
    """A batch that keeps the server busy for a while (~1 s)."""
    c, d = 64, 56
    rng = np.random.default_rng(0)
    return pb.SelectChunksRequest(
        run_id=run_id, request_id="drain-1", task_ids=["t"] * n,
        group_ids=[f"g{i // 8}" for i in range(n)], success=[i % 2 == 0 for i in range(n)],
        chunk_counts=[c] * n, phase_ids=np.tile(np.arange(c) // 16, n).tolist(),
        action_features=rng.normal(size=(n * c, d)).astype("<f4").tobytes(), feature_dim=d)


def test_serve_answers_then_drains_on_sigterm(served: Served) -> None:
    assert httpx.get(f"{served.http_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{served.http_url}/readyz").status_code == 200
    assert "pcm_select_requests_total" in httpx.get(f"{served.http_url}/metrics").text
    r = httpx.put(f"{served.http_url}/v1/runs/drain", json={"feature_dim": 56})
    assert r.status_code == 200, r.text

    with grpc.insecure_channel(served.grpc_target, options=GRPC_OPTIONS) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "pcm.v1.ChunkSelector"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service),
                                timeout=10).status == SERVING
        statuses: list[tuple[float, int]] = []
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))

        def follow() -> None:
            try:
                for update in watch:
                    statuses.append((time.monotonic(), update.status))
            except grpc.RpcError:
                pass  # cancelled below

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()

        result: dict[str, Any] = {}

        def select() -> None:
            stub = pb_grpc.ChunkSelectorStub(channel)
            try:
                result["answer"] = stub.SelectChunks(_big_select("drain", 2048), timeout=60)
            except grpc.RpcError as exc:
                result["error"] = exc
            result["done"] = time.monotonic()

        caller = threading.Thread(target=select, daemon=True)
        caller.start()
        served.wait_for_log("select run=drain")  # the call is in the servicer
        sent = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)

        deadline = time.monotonic() + 10
        while not any(s == NOT_SERVING for _, s in statuses):
            assert time.monotonic() < deadline, f"health never NOT_SERVING: {statuses}"
            time.sleep(0.01)
        watch.cancel()  # a health stream is a call too: let the drain finish
        caller.join(30)
        assert "error" not in result, result.get("error")
        assert result["answer"].total_chunks == 2048 * 64
        not_serving_at = next(t for t, s in statuses if s == NOT_SERVING)
        assert not_serving_at < result["done"], "the select finished before the drain began"

    assert served.proc.wait(15) == 0, served.log
    assert time.monotonic() - sent < 10
    assert "stopped" in served.log


@pytest.mark.parametrize("served", [("--shutdown-delay-s", "1.5")], indirect=True)
def test_serve_sigint_reports_not_ready_during_the_shutdown_delay(served: Served) -> None:
    with grpc.insecure_channel(served.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
        served.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 5
        while httpx.get(f"{served.http_url}/readyz").status_code != 503:
            assert time.monotonic() < deadline, "readyz never turned 503"
            time.sleep(0.02)
        assert httpx.get(f"{served.http_url}/healthz").status_code == 200  # still up
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == NOT_SERVING
    assert served.proc.wait(15) == 0, served.log


def test_serve_over_redis(redis_url: str) -> None:
    """PCM_STORE=redis: the same calls over a real Redis, from both transports."""
    srv = Served("--store", "redis", "--redis-url", redis_url, "--grace-period-s", "2")
    try:
        srv.wait_up()
        assert httpx.get(f"{srv.http_url}/readyz").status_code == 200
        assert httpx.put(f"{srv.http_url}/v1/runs/red", json={"feature_dim": 4}).status_code == 200
        r = httpx.post(f"{srv.http_url}/v1/runs/red/select", json=batch("r-1"))
        assert r.status_code == 200, r.text
        with grpc.insecure_channel(srv.grpc_target) as channel:
            stub = pb_grpc.ChunkSelectorStub(channel)
            resp = stub.SelectChunks(to_proto("red", batch("r-2")), timeout=10)
            assert resp.state_version == 2
            assert stub.SelectChunks(to_proto("red", batch("r-1")), timeout=10
                                     ).selection_id == r.json()["selection_id"]  # replay
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(15) == 0, srv.log
    finally:
        srv.close()


def test_cli_help_and_bad_settings() -> None:
    out = subprocess.run([sys.executable, "-m", "selector_service.cli", "serve", "--help"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--store", "--redis-url", "--grpc-port", "--http-port", "--host",
                 "--auth-tokens", "--log-level", "--max-message-mb"):
        assert flag in out.stdout
    bad = subprocess.run([sys.executable, "-m", "selector_service.cli", "serve", "--store",
                          "mongo"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "store" in bad.stderr
