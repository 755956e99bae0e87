"""`pcm-selector serve` as a real process: comes up on both ports, answers health and
readiness, and on SIGTERM turns gRPC health NOT_SERVING, lets an in-flight call finish and
exits 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pcm_bench.servers import SelectorProcess
from pcm_contract.gen.pcm.v1 import selector_pb2_grpc as pb_grpc
from tests.selector_service.conftest import GRPC_OPTIONS, batch, big_select, to_proto

ROOT = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _serve(log_dir: Path, *args: str) -> SelectorProcess:
    """`pcm-selector serve ARGS` (not started); PCM_WORKERS 0, the setting's default: one
    process a core with store=redis."""
    return SelectorProcess(workers=0, args=args, log_dir=log_dir)


@pytest.fixture
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SelectorProcess]:
    args = getattr(request, "param", ())
    srv = _serve(tmp_path, "--log-level", "DEBUG", "--grace-period-s", "5", *args)
    try:
        yield srv.start(ready=False, timeout=60)
    finally:
        srv.close()



def test_serve_answers_then_drains_on_sigterm(served: SelectorProcess) -> None:
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
                result["answer"] = stub.SelectChunks(big_select("drain", 2048), timeout=60)
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

    assert served.proc.wait(15) == 0, served.log_text()
    assert time.monotonic() - sent < 10
    assert "stopped" in served.log_text()


@pytest.mark.parametrize("served", [("--shutdown-delay-s", "1.5")], indirect=True)
def test_serve_sigint_reports_not_ready_during_the_shutdown_delay(served: SelectorProcess) -> None:
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
    assert served.proc.wait(15) == 0, served.log_text()


def test_serve_over_redis(redis_url: str, tmp_path: Path) -> None:
    """PCM_STORE=redis: the same calls over a real Redis, from both transports."""
    srv = _serve(tmp_path, "--store", "redis", "--redis-url", redis_url, "--grace-period-s", "2")
    try:
        srv.start(ready=False, timeout=60)
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
        assert srv.proc.wait(15) == 0, srv.log_text()
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
