"""`/metrics` after real traffic over both transports: every metric of docs/design.md with
its labels, values that agree with the answers, bounded trainer labels, series removed with
their run."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pcm_contract.gen.pcm.v1 import selector_pb2 as pb
from selector_service.metrics import Metrics
from selector_service.settings import Settings
from tests.fixtures.servers import ServerThread
from tests.selector_service.conftest import (
    Grpc,
    batch,
    from_proto,
    report,
    to_proto,
)

# docs/design.md, "Prometheus metrics": name -> (type, labels)
DESIGN_METRICS = {
    "pcm_select_requests_total": ("counter", {"transport", "status"}),
    "pcm_select_latency_seconds": ("histogram", {"transport"}),
    "pcm_chunks_total": ("counter", {"run", "task", "phase", "kept"}),
    "pcm_keep_probability": ("gauge", {"run", "task", "phase"}),
    "pcm_phase_score": ("gauge", {"run", "task", "phase"}),
    "pcm_selection_rate": ("gauge", {"run"}),
    "pcm_skipped_trajectories_total": ("counter", {"run"}),
    "pcm_outcome_reports_total": ("counter", {"run", "status"}),
    "pcm_success_rate": ("gauge", {"run", "trainer"}),
    "pcm_trainer_stage_seconds": ("histogram", {"run", "trainer", "stage"}),
    "pcm_store_errors_total": ("counter", {"op"}),
    "pcm_run_config_info": ("gauge", {"run", "mode", "score", "weighting"}),
    "pcm_select_staleness": ("histogram", set()),
    "pcm_select_conflicts_total": ("counter", {"reason"}),
}
RUN = "metrics-run"

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(http: httpx.Client) -> tuple[Samples, dict[str, str]]:
    r = http.get("/metrics")
    assert r.status_code == 200
    samples: Samples = defaultdict(list)
    types = {}
    for family in text_string_to_metric_families(r.text):
        types[family.name] = family.type
        for s in family.samples:
            samples[s.name].append((s.labels, s.value))
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if labels.items() <= lab.items())


@pytest.fixture
def traffic(http: httpx.Client, grpc_client: Grpc) -> Iterator[list[dict[str, Any]]]:
    """Selects over HTTP and gRPC from four trainers, reports, a replay, rejections."""
    http.delete(f"/v1/runs/{RUN}")
    http.put(f"/v1/runs/{RUN}", json={"feature_dim": 4})
    answers: list[dict[str, Any]] = []
    for i in range(6):
        body = batch(f"m-{i}", n=16, c=8 + i, seed=i, trainer_id=f"trainer-{i % 4}")
        if i % 2:
            resp = grpc_client.stub.SelectChunks(to_proto(RUN, body))
            masks, _ = from_proto(resp)
            ans = {"kept_chunks": resp.kept_chunks, "total_chunks": resp.total_chunks,
                   "skipped_trajectories": resp.skipped_trajectories,
                   "keep_probs": {t: list(v.values) for t, v in resp.keep_probs.items()},
                   "selection_id": resp.selection_id}
            assert ans["kept_chunks"] == sum(int(m.sum()) for m in masks)
        else:
            ans = http.post(f"/v1/runs/{RUN}/select", json=body).json()
        answers.append(ans)
    # a replay: counted as a request, not as chunks
    assert http.post(f"/v1/runs/{RUN}/select", json=batch("m-0")).status_code == 200
    for i, ans in enumerate(answers):
        rep = report(ans["selection_id"], f"rep-{i}", trainer_id=f"trainer-{i % 4}")
        assert http.post(f"/v1/runs/{RUN}/outcomes", json=rep).json()["accepted"] is True
    http.post(f"/v1/runs/{RUN}/outcomes", json=report(answers[0]["selection_id"], "rep-0"))
    bad = report("s", "rep-bad", success_rate=2.0)
    assert http.post(f"/v1/runs/{RUN}/outcomes", json=bad).status_code == 422
    with pytest.raises(grpc.RpcError):
        grpc_client.stub.ReportOutcomes(pb.ReportOutcomesRequest(run_id=RUN, request_id="r"))
    assert http.post("/v1/runs/never-made/outcomes", json=report("s", "r")).status_code == 404
    yield answers
    http.delete(f"/v1/runs/{RUN}")


def test_every_design_metric_with_its_labels(http: httpx.Client,
                                             traffic: list[dict[str, Any]]) -> None:
    samples, types = scrape(http)
    for name, (kind, labels) in DESIGN_METRICS.items():
        family = name.removesuffix("_total") if kind == "counter" else name
        assert types.get(family) == kind, (name, types.get(family))
        sample = name + ("_bucket" if kind == "histogram" else "")
        assert samples.get(sample), f"no samples of {sample}"
        for lab, _ in samples[sample]:
            assert set(lab) - {"le"} == labels, (name, lab)


def test_values_agree_with_the_answers(http: httpx.Client,
                                       traffic: list[dict[str, Any]]) -> None:
    samples, _ = scrape(http)
    kept = value(samples, "pcm_chunks_total", run=RUN, kept="true")
    total = value(samples, "pcm_chunks_total", run=RUN)
    assert total == sum(a["total_chunks"] for a in traffic)
    assert kept / total == pytest.approx(sum(a["kept_chunks"] for a in traffic)
                                         / sum(a["total_chunks"] for a in traffic))
    last = traffic[-1]
    assert value(samples, "pcm_selection_rate", run=RUN) == pytest.approx(
        last["kept_chunks"] / last["total_chunks"])
    assert value(samples, "pcm_skipped_trajectories_total", run=RUN) == sum(
        a["skipped_trajectories"] for a in traffic)
    for task, probs in last["keep_probs"].items():
        for phase, p in enumerate(probs):
            assert value(samples, "pcm_keep_probability", run=RUN, task=task,
                         phase=str(phase)) == pytest.approx(p)
    phases = {lab["phase"] for lab, _ in samples["pcm_phase_score"] if lab["run"] == RUN}
    assert phases <= {"0", "1", "2", "3"} and "2" in phases
    # outcome reports: 6 accepted, 1 replayed, 2 rejected (HTTP and gRPC), 1 unknown run
    assert value(samples, "pcm_outcome_reports_total", run=RUN, status="accepted") == 6
    assert value(samples, "pcm_outcome_reports_total", run=RUN, status="replayed") == 1
    assert value(samples, "pcm_outcome_reports_total", run=RUN, status="rejected") == 2
    assert value(samples, "pcm_outcome_reports_total", run="unknown", status="rejected") >= 1
    # at most max_trainers_per_run (2 in the test server) trainer labels per run
    trainers = {lab["trainer"] for lab, _ in samples["pcm_success_rate"] if lab["run"] == RUN}
    assert trainers == {"trainer-0", "trainer-1", "other"}
    assert value(samples, "pcm_trainer_stage_seconds_count", run=RUN, stage="rollout") == 6
    assert value(samples, "pcm_trainer_stage_seconds_sum", run=RUN,
                 stage="backward") == pytest.approx(6 * 0.75)
    assert value(samples, "pcm_trainer_stage_seconds_bucket", run=RUN, trainer="trainer-0",
                 stage="select", le="0.01") == 2
    # which score and weighting the run uses: the defaults, one series
    config = [lab for lab, v in samples["pcm_run_config_info"] if lab["run"] == RUN]
    assert config == [{"run": RUN, "mode": "pcm", "score": "signal", "weighting": "mean"}]


def test_the_budget_gauges_follow_the_last_answer(http: httpx.Client) -> None:
    """budget_rule auto with budget_objective rate: once the trainer's timings give its step
    time, the predicted rate is exported beside the kept fraction and predicted efficiency."""
    run = "metrics-rate"
    http.delete(f"/v1/runs/{run}")
    http.put(f"/v1/runs/{run}", json={"feature_dim": 4, "budget_rule": "auto",
                                      "weighting": "ht", "budget_objective": "rate"})
    for i, kept in enumerate((20, 30, 25, 35, 22, 28)):
        ans = http.post(f"/v1/runs/{run}/select", json=batch(f"rate-{i}", seed=i)).json()
        rep = report(ans["selection_id"], f"rate-rep-{i}", kept_chunks=kept,
                     timings={"rollout_s": 1.0, "select_s": 0.0, "backward_s": 0.02 * kept})
        assert http.post(f"/v1/runs/{run}/outcomes", json=rep).json()["accepted"] is True
    last = http.post(f"/v1/runs/{run}/select", json=batch("rate-last", seed=9)).json()
    assert last["predicted_rate"] is not None
    samples, _ = scrape(http)
    assert value(samples, "pcm_predicted_rate", run=run) == pytest.approx(last["predicted_rate"])
    assert value(samples, "pcm_predicted_efficiency", run=run) == pytest.approx(
        last["predicted_efficiency"])
    assert value(samples, "pcm_keep_fraction", run=run) == pytest.approx(last["keep_fraction"])
    http.delete(f"/v1/runs/{run}")


def test_run_config_info_follows_a_config_change(http: httpx.Client) -> None:
    run = "metrics-config"
    http.delete(f"/v1/runs/{run}")
    http.put(f"/v1/runs/{run}", json={"feature_dim": 4, "score": "action", "weighting": "ht"})
    assert http.post(f"/v1/runs/{run}/select", json=batch("c-1")).status_code == 200
    http.put(f"/v1/runs/{run}", json={"score": "signal"})
    assert http.post(f"/v1/runs/{run}/select", json=batch("c-2", seed=1)).status_code == 200
    samples, _ = scrape(http)
    config = [(lab, v) for lab, v in samples["pcm_run_config_info"] if lab["run"] == run]
    assert config == [({"run": run, "mode": "pcm", "score": "signal", "weighting": "ht"}, 1.0)]
    http.delete(f"/v1/runs/{run}")
    samples, _ = scrape(http)
    assert not [lab for lab, _ in samples["pcm_run_config_info"] if lab["run"] == run]


def test_select_requests_by_transport_and_status(http: httpx.Client, grpc_client: Grpc) -> None:
    http.put("/v1/runs/m-status", json={"feature_dim": 4})
    before, _ = scrape(http)
    assert http.post("/v1/runs/m-status/select", json=batch("s-1")).status_code == 200
    assert http.post("/v1/runs/m-status/select", content=b"{").status_code == 422
    assert http.post("/v1/runs/m-none/select", json=batch("s-1")).status_code == 404
    grpc_client.stub.SelectChunks(to_proto("m-status", batch("s-2")))
    with pytest.raises(grpc.RpcError):
        grpc_client.stub.SelectChunks(to_proto("m-status", batch("s-3"), feature_dim=3))
    with pytest.raises(grpc.RpcError):
        grpc_client.stub.SelectChunks(to_proto("m-none", batch("s-3")))
    after, _ = scrape(http)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    for transport in ("http", "grpc"):
        for status in ("OK", "INVALID_ARGUMENT", "NOT_FOUND"):
            assert delta("pcm_select_requests_total", transport=transport, status=status) == 1
        assert delta("pcm_select_latency_seconds_count", transport=transport) == 3
        assert delta("pcm_select_latency_seconds_bucket", transport=transport, le="2.0") == 3
    http.delete("/v1/runs/m-status")


def test_delete_removes_the_runs_series(http: httpx.Client, grpc_client: Grpc) -> None:
    http.put("/v1/runs/m-gone", json={"feature_dim": 4})
    ans = http.post("/v1/runs/m-gone/select", json=batch("g-1")).json()
    http.post("/v1/runs/m-gone/outcomes", json=report(ans["selection_id"], "g-rep"))
    samples, _ = scrape(http)
    assert value(samples, "pcm_chunks_total", run="m-gone") > 0
    assert http.delete("/v1/runs/m-gone").status_code == 200
    samples, _ = scrape(http)
    left = [(name, lab) for name, rows in samples.items() for lab, _ in rows
            if lab.get("run") == "m-gone"]
    assert left == []


def test_staleness_histogram_and_conflicts_counter() -> None:
    """Each committed selection's staleness lands in pcm_select_staleness; a selection
    computed again counts in pcm_select_conflicts_total by reason."""
    from selector_service.service import SelectEvent

    metrics = Metrics()
    for staleness in (0, 3, 40):
        metrics.on_select(SelectEvent(run_id="r", trainer_id="t", chunks={}, keep_probs={},
                                      scores={}, kept_chunks=0, total_chunks=0,
                                      skipped_trajectories=0, staleness=staleness))
    metrics.on_select_conflict("r", "stale")
    metrics.on_select_conflict("r", "config")
    metrics.on_select_conflict("r", "stale")
    text = metrics.render().decode()
    assert "pcm_select_staleness_count 3.0" in text
    assert "pcm_select_staleness_sum 43.0" in text
    assert 'pcm_select_staleness_bucket{le="2.0"} 1.0' in text
    assert 'pcm_select_staleness_bucket{le="4.0"} 2.0' in text
    assert 'pcm_select_conflicts_total{reason="stale"} 2.0' in text
    assert 'pcm_select_conflicts_total{reason="config"} 1.0' in text


def test_store_errors_counter() -> None:
    metrics = Metrics()
    metrics.on_store_error("commit_select")
    metrics.on_store_error("commit_select")
    text = metrics.render().decode()
    assert 'pcm_store_errors_total{op="commit_select"} 2.0' in text
    assert 'pcm_store_errors_total{op="ping"} 0.0' in text


def test_redis_store_down_is_unavailable_and_counted(unused_tcp_port: int) -> None:
    """With PCM_STORE=redis and Redis unreachable: /readyz 503, Select 503 / UNAVAILABLE,
    pcm_store_errors_total counts the failures (the other engineer's RedisStore)."""
    pytest.importorskip("selector_service.store.redis_store")
    settings = Settings(host="127.0.0.1", grpc_port=0, http_port=0, store="redis",
                        redis_url=f"redis://127.0.0.1:{unused_tcp_port}/0", grace_period_s=1)
    srv = ServerThread(settings).start()
    try:
        with httpx.Client(base_url=srv.http_url, timeout=30) as http:
            assert http.get("/healthz").status_code == 200
            assert http.get("/readyz").status_code == 503
            r = http.post("/v1/runs/r/select", json=batch("x"))
            assert r.status_code == 503 and r.json()["code"] == "UNAVAILABLE"
            with grpc.insecure_channel(srv.grpc_target) as channel:
                from pcm_contract.gen.pcm.v1 import selector_pb2_grpc

                stub = selector_pb2_grpc.ChunkSelectorStub(channel)
                with pytest.raises(grpc.RpcError) as err:
                    stub.GetRun(pb.GetRunRequest(run_id="r"), timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            samples, _ = scrape(http)
            assert value(samples, "pcm_store_errors_total") >= 2
    finally:
        srv.stop()
