"""The selector's guards against broken or hostile clients and failing stores, one test per
behaviour, over real servers with tight limits (tests/hardening/conftest.py): bodies are read
only after auth and capped; big selects are refused before parsing; a request id is tied to its
request; no commit is left behind by a client that timed out; metric series are bounded; slow
and idle connections are cut off; unknown ids, malformed protobuf, bad run ids and loose
types are refused with errors that name the field; gRPC health follows the store; the server
binds to loopback unless deployed, shows its defaults in --help and serves its API docs without
a CDN."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from pcm_bench.servers import RedisServer
from pcm_contract.errors import InvalidArgument, NotFound
from pcm_contract.gen.pcm.v1 import selector_pb2 as pb
from pcm_contract.gen.pcm.v1 import selector_pb2_grpc as pb_grpc
from selector_service.grpc_api import server as grpc_server_module
from selector_service.metrics import Metrics
from selector_service.service import SelectorService
from selector_service.settings import Settings
from selector_service.store import MemoryStore
from tests.fixtures.servers import ServerThread
from tests.hardening.conftest import (
    AUTH,
    make_run,
    read_all,
    serving,
    state,
    status_of,
    trickle_until_closed,
)
from tests.selector_service.conftest import (
    GRPC_OPTIONS,
    TOKEN,
    batch,
    report,
    to_proto,
)

ROOT = Path(__file__).resolve().parents[2]
METADATA = (("authorization", f"Bearer {TOKEN}"),)


def _stub(srv: ServerThread) -> tuple[grpc.Channel, pb_grpc.ChunkSelectorStub]:
    channel = grpc.insecure_channel(srv.grpc_target, options=GRPC_OPTIONS)
    return channel, pb_grpc.ChunkSelectorStub(channel)


def _head(method: str, path: str, length: int | None, *, token: bool,
          chunked: bool = False) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: selector", "content-type: application/json"]
    if token:
        lines.append(f"authorization: Bearer {TOKEN}")
    if length is not None:
        lines.append(f"content-length: {length}")
    if chunked:
        lines.append("transfer-encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer_before_body(port: int, head: bytes, sent: int = 64 * 1024) -> tuple[int, float]:
    """Send `head` and `sent` bytes of a body that claims to be far larger; the status the
    server answers without waiting for the rest, and how long it took."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + b"[" * sent)
        response = read_all(sock, 5.0)
    return status_of(response), time.monotonic() - start


# -- 1 -------------------------------------------------------------------------------------------


def test_body_is_not_read_before_auth_and_every_body_is_capped(
        guarded: ServerThread, client: httpx.Client) -> None:
    port = guarded.server.http_port
    huge = 100 * 1024 * 1024  # declared, never sent
    # Without a token: 401 at once, on every route, though 100 MB are announced.
    for method, path in (("PUT", "/v1/runs/cap"), ("POST", "/v1/runs/cap/select"),
                         ("POST", "/v1/runs/cap/outcomes")):
        status, took = _answer_before_body(port, _head(method, path, huge, token=False))
        assert status == 401, (method, path)
        assert took < 3.0
    # With a token: 413 by the declared size, before reading it (select: PCM_MAX_BODY_MB=1,
    # the others PCM_MAX_SMALL_BODY_KB=4).
    for method, path, size in (("PUT", "/v1/runs/cap", 5 * 1024),
                               ("POST", "/v1/runs/cap/outcomes", 5 * 1024),
                               ("POST", "/v1/runs/cap/select", 2 * 1024 * 1024)):
        status, _ = _answer_before_body(port, _head(method, path, size, token=True), sent=16)
        assert status == 413, (method, path)
    # A chunked body without a size: 413 as soon as it passes the limit.
    r = client.put("/v1/runs/cap", content=iter([b'{"eps": 0.1', b" " * 8192, b"}"]))
    assert r.status_code == 413 and r.json()["field"] == "body"
    # Bodies within the limits still work.
    assert client.put("/v1/runs/cap", json={"feature_dim": 4}).status_code == 200


# -- 2 -------------------------------------------------------------------------------------------


def test_big_select_is_refused_before_parsing_and_parsed_into_numpy(
        guarded: ServerThread, client: httpx.Client) -> None:
    port = guarded.server.http_port
    status, took = _answer_before_body(
        port, _head("POST", "/v1/runs/cap/select", 100 * 1024 * 1024, token=True))
    assert status == 413 and took < 3.0
    # Streamed without a declared size: refused once it passes PCM_MAX_BODY_MB (1 MiB here).
    chunks = iter([b'{"request_id": "big", "trajectories": [{"action_features": [['] +
                  [b"0," * 32768] * 17)
    r = client.post("/v1/runs/cap/select", content=chunks)
    assert r.status_code == 413 and r.json()["field"] == "body"

    # Within the limit, the numbers are never one Python float each (2 bytes of "0," used to
    # cost 32 and more): the whole request, client and server, stays within a few body sizes.
    n = 2_000_000
    body = (b'{"request_id": "r", "trajectories": [{"task_id": "t", "group_id": "g", '
            b'"success": true, "phase_ids": [0], "action_features": [['
            + b"0," * (n - 1) + b"0]]}]}")
    with serving(max_body_mb=16) as srv, \
            httpx.Client(base_url=srv.http_url, headers=AUTH, timeout=60) as http:
        assert http.put("/v1/runs/mem", json={"feature_dim": 4}).status_code == 200
        tracemalloc.start()
        try:
            r = http.post("/v1/runs/mem/select", content=body)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "trajectories[0].action_features"
    assert peak < 4 * len(body), f"a {len(body)}-byte request peaked at {peak} bytes"


# -- 3 -------------------------------------------------------------------------------------------


def test_request_id_is_tied_to_the_request(guarded: ServerThread,
                                                     client: httpx.Client) -> None:
    first = make_run(client, "idem")
    before = state(client, "idem")
    # The same request again: the stored answer.
    again = client.post("/v1/runs/idem/select", json=batch("idem-warm"))
    assert again.status_code == 200 and again.json()["masks"] == first["masks"]
    # The same request_id with another body: 409 naming request_id, nothing changes.
    other = batch("idem-warm", seed=7)
    r = client.post("/v1/runs/idem/select", json=other)
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "ALREADY_EXISTS" and r.json()["field"] == "request_id"
    channel, stub = _stub(guarded)
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.SelectChunks(to_proto("idem", other), metadata=METADATA)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert dict(err.value.trailing_metadata())["pcm-error-field"] == "request_id"
    # Reports too.
    rep = report(first["selection_id"], "idem-rep")
    assert client.post("/v1/runs/idem/outcomes", json=rep).status_code == 200
    assert client.post("/v1/runs/idem/outcomes", json=rep).status_code == 200
    r = client.post("/v1/runs/idem/outcomes", json={**rep, "success_rate": 0.9})
    assert r.status_code == 409 and r.json()["field"] == "request_id"
    after = state(client, "idem")
    assert after["state_version"] == before["state_version"]
    assert after["tasks"] == before["tasks"] and after["outcome_reports"] == 1


# -- 4 -------------------------------------------------------------------------------------------


def _eventually(predicate: Any, timeout_s: float) -> bool:
    """Poll predicate until it holds or timeout_s passes (no fixed sleeps in these tests)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class SlowService(SelectorService):
    """Commits, then answers late: an injected timeout for the client."""

    delay_s = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.late_answer_sent = threading.Event()  # a delayed select has committed and answered

    def select_flat(self, run_id: str, request: Any) -> Any:  # gRPC's path, and select's
        answer = super().select_flat(run_id, request)
        if self.delay_s:
            time.sleep(self.delay_s)
            self.late_answer_sent.set()
        return answer


def _kept_by_phase(batches: list[dict[str, Any]], masks: list[list[np.ndarray]],
                   phases: int) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for body, mask in zip(batches, masks, strict=True):
        for t, m in zip(body["trajectories"], mask, strict=True):
            counts = out.setdefault(t["task_id"], [0] * phases)
            for phase, kept in zip(t["phase_ids"], m, strict=True):
                counts[int(phase)] += int(kept)
    return out


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_no_phantom_commit_after_a_client_timeout(transport: str) -> None:
    """The service commits a batch but answers after the client's timeout; the client trains
    on its local selection. Once the service answers again, the run counts that batch once,
    with the client's masks (not the phantom answer's)."""
    from trainer_client import connect

    store = MemoryStore()
    service = SlowService(store)
    srv = ServerThread(Settings(host="127.0.0.1", grpc_port=0, http_port=0,
                                worker_threads=4, grace_period_s=1.0), service=service).start()
    url = srv.http_url if transport == "http" else f"grpc://{srv.grpc_target}"
    run = f"phantom-{transport}"
    try:
        # a timeout that a loaded machine's ordinary calls stay well inside, and a delay
        # well past it for the one late answer
        with connect(url, timeout_s=2.0, retries=0, fallback=True) as client:
            client.put_run(run, phases=4, feature_dim=4, keep_fraction=0.25, seed=3)
            bodies = [batch(f"{run}-0", seed=0)]
            trained = [client.select(run, bodies[0]).masks]
            service.delay_s = 4.0  # the next answer comes after the client gave up
            bodies.append(batch(f"{run}-1", seed=1))
            local = client.select(run, bodies[1])
            assert local.selection_id == f"local-{run}-1"
            trained.append(local.masks)
            # the service has committed its own (phantom) answer and finished the late reply
            assert service.late_answer_sent.wait(30)
            service.delay_s = 0.0
            phantom = store.get_request(run, f"{run}-1")
            assert phantom is not None
            # Its mask differs from the one trained on (else the test would prove nothing).
            assert not all(np.array_equal(a, b) for a, b in zip(phantom[1].masks, local.masks,
                                                                  strict=True))
            ack = client.report_outcomes(run, {"selection_id": local.selection_id,
                                               "request_id": f"{run}-1/outcome", "step": 1,
                                               "success_rate": 0.5})
            assert ack.accepted
            info = client.get_run(run)
            # Two batches trained on, each counted once, with the masks trained on.
            assert info.state_version == 2 and info.outcome_reports == 1
            expected = _kept_by_phase(bodies, trained, 4)
            assert {t: s.chunks_kept for t, s in info.tasks.items()} == expected
            assert client.pending == 0
        # A replay of the request gets what the client trained on.
        stored = store.get_request(run, f"{run}-1")
        assert stored is not None
        assert all(np.array_equal(a, b) for a, b in zip(stored[1].masks, local.masks,
                                                        strict=True))
    finally:
        srv.stop()


# -- 5 -------------------------------------------------------------------------------------------


def _series(text: str, run: str | None = None) -> list[dict[str, str]]:
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "run" in sample.labels and (run is None or sample.labels["run"] == run):
                out.append(sample.labels)
    return out


def test_metrics_series_are_bounded_and_dropped(guarded: ServerThread,
                                                          client: httpx.Client) -> None:
    # One select with 64 new task ids: at most PCM_MAX_TASKS_PER_RUN (4) task labels.
    make_run(client, "many-tasks")
    body = batch("tasks-64", n=64, tasks=tuple(f"task-{i}" for i in range(64)), group_size=2)
    assert client.post("/v1/runs/many-tasks/select", json=body).status_code == 200
    text = client.get("/metrics").text
    tasks = {s["task"] for s in _series(text, "many-tasks") if "task" in s}
    assert len(tasks) <= 5 and "other" in tasks  # 4 tasks and "other"
    chunks = sum(v for f in text_string_to_metric_families(text) for s in f.samples
                 if s.name == "pcm_chunks_total" and s.labels.get("run") == "many-tasks"
                 for v in [s.value])
    assert chunks == 64 * 8 + 16 * 8  # every chunk still counted (the warm-up had 16 x 8)
    # Runs beyond PCM_MAX_RUNS (3) are counted as run="other".
    for k in range(4):
        make_run(client, f"run-{k}")
    runs = {s["run"] for s in _series(client.get("/metrics").text)}
    assert len(runs - {"unknown"}) <= 4 and "other" in runs
    # DELETE drops the run's series.
    assert client.delete("/v1/runs/many-tasks").status_code == 200
    assert _series(client.get("/metrics").text, "many-tasks") == []

    # Another selector deleted the run: this one drops its series on the NOT_FOUND...
    clock = [0.0]
    store = MemoryStore()
    metrics = Metrics(max_tasks_per_run=4, max_runs=3, run_ttl_s=60, clock=lambda: clock[0])
    service = SelectorService(store, metrics)
    service.put_run("elsewhere", feature_dim=4)
    service.select("elsewhere", batch("e-1"))
    assert _series(metrics.render().decode(), "elsewhere")
    store.delete_run("elsewhere")  # as a DELETE through another selector does
    with pytest.raises(NotFound):
        service.select("elsewhere", batch("e-2"))
    assert _series(metrics.render().decode(), "elsewhere") == []
    # ...and the series of a run not seen for run_ttl_s expire.
    service.put_run("idle", feature_dim=4)
    service.select("idle", batch("i-1"))
    clock[0] = 61.0
    assert _series(metrics.render().decode(), "idle") == []


# -- 6 -------------------------------------------------------------------------------------------


def test_slow_and_idle_connections_are_cut_off(guarded: ServerThread) -> None:
    port = guarded.server.http_port
    # Headers one byte at a time, slower than PCM_HEADER_TIMEOUT_S (0.5 s) allows in all.
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        assert trickle_until_closed(sock, b"GET /healthz HTTP/1.1\r\nhost: x\r\n", 0.2)
        assert time.monotonic() - start < 3.0
    # A body slower than PCM_BODY_TIMEOUT_S (0.5 s): 408.
    head = _head("PUT", "/v1/runs/slow", 100, token=True)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + b'{"eps": ')
        response = read_all(sock, 3.0)
    assert status_of(response) == 408
    # An idle connection that never sends anything is closed too.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        start = time.monotonic()
        assert read_all(sock, 3.0) == b"" and time.monotonic() - start < 2.5
    # Connections beyond PCM_MAX_CONNECTIONS (24) are closed at once.
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(30)]
    try:
        closed: set[int] = set()

        def six_closed() -> bool:  # the server closes the ones over the cap
            for i, sock in enumerate(socks):
                if i in closed:
                    continue
                sock.settimeout(0.01)
                try:
                    if sock.recv(1) == b"":
                        closed.add(i)
                except TimeoutError:
                    pass
                except OSError:
                    closed.add(i)
            return len(closed) >= 6

        assert _eventually(six_closed, 5.0)
    finally:
        for sock in socks:
            sock.close()
    # gRPC: keepalive, connection age / idle limits, handshake timeout, connection cap.
    options = dict(grpc_server_module.server_options(Settings()))
    for key in ("grpc.keepalive_time_ms", "grpc.keepalive_timeout_ms",
                "grpc.max_connection_idle_ms", "grpc.max_connection_age_ms",
                "grpc.max_connection_age_grace_ms", "grpc.server_handshake_timeout_ms",
                "grpc.max_allowed_incoming_connections"):
        assert options[key] > 0, key
    # A TCP connection to the gRPC port that never completes the HTTP/2 handshake is closed
    # after PCM_GRPC_HANDSHAKE_TIMEOUT_S (0.5 s here).
    with socket.create_connection(("127.0.0.1", guarded.server.grpc_port), timeout=5) as sock:
        start = time.monotonic()
        read_all(sock, 5.0)
        assert time.monotonic() - start < 4.0


# -- 7 -------------------------------------------------------------------------------------------


def test_unknown_selection_id_is_not_found(guarded: ServerThread,
                                                     client: httpx.Client) -> None:
    first = make_run(client, "sel-check")
    r = client.post("/v1/runs/sel-check/outcomes", json=report("sel-nope", "rep-x"))
    assert r.status_code == 404, r.text
    assert r.json()["field"] == "selection_id" and r.json()["code"] == "NOT_FOUND"
    channel, stub = _stub(guarded)
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.ReportOutcomes(pb.ReportOutcomesRequest(
            run_id="sel-check", selection_id="sel-nope", request_id="rep-y", success_rate=0.5),
            metadata=METADATA)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert dict(err.value.trailing_metadata())["pcm-error-field"] == "selection_id"
    assert state(client, "sel-check")["outcome_reports"] == 0
    ok = client.post("/v1/runs/sel-check/outcomes", json=report(first["selection_id"], "rep-z"))
    assert ok.status_code == 200
    assert state(client, "sel-check")["outcome_reports"] == 1


# -- 8 -------------------------------------------------------------------------------------------


def test_malformed_protobuf_is_invalid_argument_without_a_traceback(
        guarded: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    channel, _ = _stub(guarded)
    rng = np.random.default_rng(8)
    with channel:
        for method in ("SelectChunks", "PutRun", "ReportOutcomes", "GetRun", "DeleteRun"):
            call = channel.unary_unary(f"/pcm.v1.ChunkSelector/{method}")
            for payload in (b"\xff\xff\xff\xff", b"\x12\x05ab", b"\x0a\x02\xc3\x28",
                            bytes(rng.integers(0, 256, 64, dtype=np.uint8))):
                with pytest.raises(grpc.RpcError) as err:
                    call(payload, metadata=METADATA, timeout=5)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, payload)
        # The services open without a token too.
        garbage = b"\xff\xff\xff"
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/grpc.health.v1.Health/Check")(garbage, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            list(channel.unary_stream("/grpc.health.v1.Health/Watch")(garbage, timeout=5))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        reflect = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        with pytest.raises(grpc.RpcError) as err:
            list(reflect(iter([garbage]), timeout=5))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text


# -- 9 -------------------------------------------------------------------------------------------


def test_run_id_with_a_trailing_newline_is_rejected(guarded: ServerThread,
                                                               client: httpx.Client) -> None:
    service = SelectorService(MemoryStore())
    with pytest.raises(InvalidArgument) as exc:
        service.put_run("run\n", feature_dim=4)
    assert exc.value.field == "run_id"
    r = client.put("/v1/runs/run%0A", json={"feature_dim": 4})
    assert r.status_code == 422 and r.json()["field"] == "run_id"
    channel, stub = _stub(guarded)
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.PutRun(pb.PutRunRequest(run_id="run\n"), metadata=METADATA)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The patterns are in the OpenAPI document.
    doc = client.get("/openapi.json").json()
    for path in ("/v1/runs/{run_id}", "/v1/runs/{run_id}/select", "/v1/runs/{run_id}/outcomes"):
        for operation in doc["paths"][path].values():
            (param,) = [p for p in operation["parameters"] if p["name"] == "run_id"]
            assert param["schema"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
    trajectory = doc["components"]["schemas"]["TrajectoryIn"]["properties"]
    assert trajectory["task_id"]["pattern"].startswith("^[A-Za-z0-9]")


# -- 10 ------------------------------------------------------------------------------------------


def test_request_types_are_strict(guarded: ServerThread,
                                            client: httpx.Client) -> None:
    make_run(client, "strict")
    before = state(client, "strict")

    def mutated(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
        body = batch("strict-1")
        node: Any = body
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return body

    selects = {("trajectories", 0, "success"): ["yes", 1, 0, None],
               ("step",): [True, "3", 1.5], ("keep_fraction",): [True, "0.5"]}
    for path, values in selects.items():
        for value in values:
            r = client.post("/v1/runs/strict/select", json=mutated(path, value))
            assert r.status_code == 422, (path, value, r.text)
            assert r.json()["field"] == ".".join(
                f"[{p}]" if isinstance(p, int) else p for p in path).replace(".[", "["), r.json()
    for field, value in (("seed", False), ("phases", True), ("feature_dim", "4"),
                         ("eps", True)):
        r = client.put("/v1/runs/strict", json={field: value})
        assert r.status_code == 422 and r.json()["field"] == field, (field, value)
    rep = report("s", "r")
    for field, value in (("success_rate", True), ("step", False), ("kept_chunks", True)):
        r = client.post("/v1/runs/strict/outcomes", json={**rep, field: value})
        assert r.status_code == 422 and r.json()["field"] == field, (field, value)
    assert state(client, "strict") == before
    # NumPy scalars (what trainers hold) are still fine.
    service = SelectorService(MemoryStore())
    service.put_run("np", feature_dim=np.int64(4), seed=np.int64(2))
    body = batch("np-1")
    body["step"] = np.int64(3)
    body["trajectories"][0]["success"] = np.bool_(True)
    assert service.select("np", body).state_version == 1


# -- 11 ------------------------------------------------------------------------------------------


def test_every_error_names_the_field_and_quotes_inputs_short(
        guarded: ServerThread, client: httpx.Client) -> None:
    make_run(client, "errors")
    for path in ("/v1/runs/errors/select", "/v1/runs/errors/outcomes", "/v1/runs/errors"):
        method = client.put if path == "/v1/runs/errors" else client.post
        r = method(path, content=b'{"request_id": "\xff\xfe"}')
        assert r.status_code == 422, (path, r.text)
        assert r.json()["field"] == "body" and r.json()["code"] == "INVALID_ARGUMENT"
    long_id = "r" * 100_000
    r = client.post("/v1/runs/errors/select", json=batch(long_id))
    assert r.status_code == 422 and r.json()["field"] == "request_id"
    assert len(r.text) < 2000
    channel, stub = _stub(guarded)
    with channel:
        for call in (lambda: stub.GetRun(pb.GetRunRequest(run_id=long_id), metadata=METADATA),
                     lambda: stub.PutRun(pb.PutRunRequest(run_id="é" * 50_000),
                                         metadata=METADATA)):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert len(err.value.details()) < 1000
            assert dict(err.value.trailing_metadata())["pcm-error-field"] == "run_id"
    service = SelectorService(MemoryStore())
    with pytest.raises(NotFound) as missing:
        service.get_run("x" * 64)
    assert len(str(missing.value)) < 200


# -- 12 ------------------------------------------------------------------------------------------


def test_grpc_health_follows_a_failed_store_call_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grpc_server_module, "HEALTH_POLL_S", 3600.0)  # only the calls count
    service_name = "pcm.v1.ChunkSelector"
    with RedisServer(data_dir=tmp_path / "redis", appendonly=True) as redis_server, \
            serving(store="redis", redis_url=redis_server.url, auth_tokens="") as srv:
        channel, stub = _stub(srv)
        health = health_pb2_grpc.HealthStub(channel)

        def status() -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=service_name),
                                timeout=2).status

        with channel:
            stub.PutRun(pb.PutRunRequest(run_id="h", config=pb.RunConfig(feature_dim=4)))
            assert status() == health_pb2.HealthCheckResponse.SERVING
            redis_server.stop()
            with pytest.raises(grpc.RpcError) as err:
                stub.GetRun(pb.GetRunRequest(run_id="h"), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            # at once: well inside the 5 s store poll
            assert _eventually(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING,
                               1.0)
            redis_server.start()
            stub.GetRun(pb.GetRunRequest(run_id="h"), timeout=5)  # the next call succeeds
            assert _eventually(lambda: status() == health_pb2.HealthCheckResponse.SERVING, 1.0)


# -- 13 ------------------------------------------------------------------------------------------


def test_loopback_by_default_defaults_in_help_and_no_cdn_docs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PCM_HOST", raising=False)
    assert Settings().host == "127.0.0.1"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["selector"]["environment"]["PCM_HOST"] == "0.0.0.0"
    assert "PCM_HOST=0.0.0.0" in (ROOT / "deploy" / "selector.Dockerfile").read_text()
    out = subprocess.run([sys.executable, "-m", "selector_service.cli", "serve", "--help"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    for default in ("127.0.0.1", "50051", "8000", "memory", "256", "INFO"):
        assert f"[default: ({default})]" in out.stdout or f"[default: {default}]" in out.stdout, \
            default
    # Swagger UI would load its scripts from a CDN: off by default, the schema stays.
    with serving(auth_tokens="") as srv, httpx.Client(base_url=srv.http_url) as http:
        assert http.get("/docs").status_code == 404
        assert http.get("/openapi.json").status_code == 200
    with serving(auth_tokens="", docs_ui=True) as srv, httpx.Client(base_url=srv.http_url) as h:
        assert h.get("/docs").status_code == 200

