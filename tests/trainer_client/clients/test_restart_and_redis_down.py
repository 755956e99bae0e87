"""Durability over Redis: a SIGKILLed selector loses nothing; with Redis down the selector says
so fast (readiness, health, UNAVAILABLE/503) and a fallback client selects locally, queues its
reports, and delivers each exactly once when Redis is back, with its local selections counted
with the masks it trained on."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pcm_bench.servers import RedisServer, SelectorProcess
from pcm_contract.errors import StoreUnavailable
from pcm_contract.models import SelectRequest
from selector_service.store.redis_store import RedisStore
from tests.trainer_client.clients.conftest import small_batch
from trainer_client import connect
from trainer_client.clients.http_transport import select_body

CONFIG = {"phases": 3, "feature_dim": 4, "keep_fraction": 0.4, "seed": 5}
SERVICE = "pcm.v1.ChunkSelector"


def _health(grpc_url: str) -> int:
    with grpc.insecure_channel(grpc_url.removeprefix("grpc://")) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2).status


def _until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_sigkill_loses_no_state(isolated_redis_server: RedisServer, tmp_path: Path) -> None:
    selector = SelectorProcess(store="redis", redis_url=isolated_redis_server.url,
                               log_dir=tmp_path).start()
    try:
        with connect(selector.grpc_url) as client:
            client.put_run("durable", **CONFIG)
            answers = [client.select("durable", small_batch(f"r{k}", seed=k)) for k in range(5)]
            before = client.get_run("durable")
            selector.kill()  # SIGKILL: no shutdown, no flush
            selector.start()
            # The same client reconnects (retries) to the new process on the same port.
            assert client.get_run("durable") == before
            assert client.select("durable", small_batch("r2", seed=2)).same_as(answers[2])
            assert client.select("durable", small_batch("r5", seed=5)).state_version == 6
    finally:
        selector.stop()


def test_redis_down_then_back(isolated_redis_server: RedisServer, tmp_path: Path) -> None:
    redis_server = isolated_redis_server
    selector = SelectorProcess(store="redis", redis_url=redis_server.url,
                               log_dir=tmp_path).start()
    options = {"retries": 3, "backoff_s": 0.05, "max_backoff_s": 0.2, "fallback": True}
    trainer = connect(selector.grpc_url, **options)
    raw = connect(selector.grpc_url, retries=0)
    try:
        trainer.put_run("outage", **CONFIG)
        served = trainer.select("outage", small_batch("s0"))
        assert _health(selector.grpc_url) == health_pb2.HealthCheckResponse.SERVING

        redis_server.stop()
        http = httpx.Client(base_url=selector.http_url, timeout=5)
        assert http.get("/readyz").status_code == 503
        assert http.get("/healthz").status_code == 200  # the process itself is up
        assert _until(lambda: _health(selector.grpc_url)
                      == health_pb2.HealthCheckResponse.NOT_SERVING, 10)

        # Select answers UNAVAILABLE / 503 quickly: no hang (a loose bound: liveness).
        start = time.monotonic()
        with pytest.raises(StoreUnavailable):
            raw.select("outage", small_batch("s1"))
        assert time.monotonic() - start < 1.0
        start = time.monotonic()
        body = select_body(SelectRequest.model_validate(small_batch("s1")))
        reply = http.post("/v1/runs/outage/select", content=body,
                          headers={"content-type": "application/json"})
        assert reply.status_code == 503 and reply.json()["code"] == "UNAVAILABLE"
        assert time.monotonic() - start < 1.0

        # The fallback client selects locally and queues its reports.
        local = trainer.select("outage", small_batch("s1", seed=1))
        assert local.selection_id == "local-s1"
        assert local.state_version == served.state_version
        for k, sel in enumerate((served.selection_id, local.selection_id, local.selection_id)):
            ack = trainer.report_outcomes("outage", {"selection_id": sel, "request_id": f"o{k}",
                                                     "step": k, "success_rate": 0.25 * k})
            assert ack.accepted
        assert trainer.pending_reports == 3

        redis_server.start()  # same port, same AOF: the run is still there
        assert _until(lambda: http.get("/readyz").status_code == 200, 10)
        answer = trainer.select("outage", small_batch("s2", seed=2))  # success: replays queue
        assert answer.selection_id.startswith("sel-")
        assert trainer.pending_reports == 0
        assert trainer.flush() == 0

        info = trainer.get_run("outage")
        assert info.outcome_reports == 3
        # s0, s2 and the local s1: every batch trained on is counted once, with the masks the
        # trainer used (the client replayed s1 with its local masks once Redis was back).
        assert info.state_version == 3
        kept = sum(sum(t.chunks_kept) for t in info.tasks.values())
        assert kept == served.kept_chunks + local.kept_chunks + answer.kept_chunks
        with RedisStore(redis_server.url) as store:
            history = store.history("outage", 100)
        reports = [h for h in history if h["type"] == "report"]
        assert [h["request_id"] for h in reports] == ["o0", "o1", "o2"]
        # Replaying a delivered report (a lost reply) changes nothing.
        trainer.report_outcomes("outage", {"selection_id": local.selection_id,
                                           "request_id": "o1", "step": 1, "success_rate": 0.25})
        assert trainer.get_run("outage").outcome_reports == 3
        http.close()
    finally:
        trainer.close()
        raw.close()
        selector.stop()
