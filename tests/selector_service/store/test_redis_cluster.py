"""The Redis store on a real Redis Cluster: `PCM_REDIS_URL=redis+cluster://...`.

- the URL form, and the per-run epoch (the run's shard's run_id, the same on every selector);
- two selectors x 8 concurrent clients (gRPC and HTTP) on a 3-master cluster, three runs on three
  different masters: state_version, outcome reports and per-(task, phase) chunk counts exact;
  a replayed request_id (through the other selector and transport) gets the same answer and
  counts nothing twice;
- then one master's process is SIGKILLed: runs on the other masters keep working (exactly
  counted), and every call for a run on the dead master's slots is UNAVAILABLE (gRPC) / 503
  (HTTP), never an answer, both before and after the cluster marks the master failed; the
  selectors stay ready (/readyz), as the rest of the cluster answers.

The PhaseStore contract itself runs on a cluster too (test_store_contract.py, "cluster").
About 30 s on 2 busy cores.
    python -m pytest tests/selector_service/store/test_redis_cluster.py -q
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from redis.crc import key_slot

from pcm_bench.servers import SelectorProcess
from pcm_contract.gen.pcm.v1 import selector_pb2_grpc as pb_grpc
from selector_service.settings import Settings
from selector_service.store.redis_store import RedisStore, RunKeys, parse_cluster_url
from tests.fixtures.redis_cluster import ClusterNode, RedisClusterServers
from tests.selector_service.conftest import GRPC_OPTIONS, batch, to_proto
from tests.selector_service.exact_counts import Trained, assert_exact, client_steps, run_clients
from trainer_client import connect

CLIENTS = 8
STEPS = 5


def test_cluster_url_forms() -> None:
    nodes, options = parse_cluster_url("redis+cluster://10.0.0.1:7000,10.0.0.2:7001")
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001)] and options == {"ssl": False}
    nodes, options = parse_cluster_url("rediss+cluster://pcm:s%40cret@[::1]:7000/0")
    assert nodes == [("::1", 7000)]
    assert options == {"ssl": True, "username": "pcm", "password": "s@cret"}
    for bad in ("redis+cluster://h:7000/1", "redis+cluster://h", "redis+cluster://h:7000?x=1",
                "redis://h:7000"):
        with pytest.raises(ValueError):
            parse_cluster_url(bad)
    assert Settings(store="redis", redis_url="redis+cluster://a:1,b:2").redis_url


def runs_on_distinct_masters(cluster: RedisClusterServers) -> list[str]:
    """One run id per master, in the order of cluster.nodes."""
    found: dict[int, str] = {}
    for k in itertools.count():
        run = f"run-{k}"
        owner = cluster.node_for_key(RunKeys(run).config)
        found.setdefault(owner.port, run)
        if len(found) == len(cluster.nodes):
            return [found[n.port] for n in cluster.nodes]
    raise AssertionError("unreachable")


def test_epoch_is_the_runs_shard_and_the_same_on_every_store(
        redis_cluster: RedisClusterServers, redis_cluster_url: str) -> None:
    runs = runs_on_distinct_masters(redis_cluster)
    with RedisStore(redis_cluster_url) as one, RedisStore(redis_cluster_url) as two:
        epochs = []
        for run in runs:
            one.get_config(run)
            epoch = one.epoch
            two.get_config(run)
            assert two.epoch == epoch != "redis-unknown"
            epochs.append(epoch)
        assert len(set(epochs)) == len(runs)  # one incarnation per master
        # The slot's keys are all on one node: a run's keys share the hash tag.
        keys = RunKeys(runs[0])
        slots = {key_slot(k.encode()) for k in (keys.config, keys.tasks, keys.reqs,
                                                keys.history, keys.sels, keys.state("a"),
                                                keys.req("r"))}
        assert len(slots) == 1


@pytest.fixture
def cluster() -> Iterator[RedisClusterServers]:
    """A cluster of this test's own: the test kills one of its masters."""
    with RedisClusterServers(masters=3) as servers:
        yield servers


def _dead_slot_calls(selectors: list[SelectorProcess], run: str, tag: str) -> None:
    """Every call for `run` fails with UNAVAILABLE / 503, through each selector."""
    for k, selector in enumerate(selectors):
        body = batch(f"{run}-dead-{tag}-{k}")
        r = httpx.post(f"{selector.http_url}/v1/runs/{run}/select", json=body, timeout=30)
        assert r.status_code == 503, r.text
        assert httpx.get(f"{selector.http_url}/v1/runs/{run}", timeout=30).status_code == 503
        r = httpx.post(f"{selector.http_url}/v1/runs/{run}/outcomes", timeout=30, json={
            "selection_id": "sel-x", "request_id": f"dead-{tag}-{k}", "success_rate": 0.5})
        assert r.status_code == 503, r.text
        with grpc.insecure_channel(f"127.0.0.1:{selector.grpc_port}",
                                   options=GRPC_OPTIONS) as channel:
            stub = pb_grpc.ChunkSelectorStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.SelectChunks(to_proto(run, body), timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value


def test_two_selectors_on_a_cluster_count_exactly_and_survive_a_dead_master(
        cluster: RedisClusterServers, tmp_path: Path) -> None:
    runs = runs_on_distinct_masters(cluster)
    selectors = [SelectorProcess(store="redis", redis_url=cluster.url,
                                 log_dir=tmp_path / f"selector{k}") for k in range(2)]
    try:
        for selector in selectors:
            selector.start(timeout=60)
        with connect(selectors[0].http_url) as admin:
            for run in runs:
                admin.put_run(run, phases=4, feature_dim=4, keep_fraction=0.25, seed=7)

        # 8 clients: selector k % 2, transport (k // 2) % 2, run k % 3.
        targets = []
        for k in range(CLIENTS):
            selector = selectors[k % 2]
            url = selector.grpc_url if (k // 2) % 2 else selector.http_url
            targets.append((url, runs[k % len(runs)]))
        trained = run_clients(targets, STEPS)
        with connect(selectors[1].grpc_url) as check:
            for run in runs:
                assert_exact(check.get_run(run), [t for t in trained if t.run_id == run])

        # Replays, through the other selector and transport: the stored answer, nothing new.
        for client in trained[:4]:
            body, answer = client.steps[1]
            other = selectors[(client.index + 1) % 2]
            url = other.http_url if client.url.startswith("grpc") else other.grpc_url
            with connect(url, retries=0) as replayer:
                again = replayer.select(client.run_id, body)
            assert again.selection_id == answer.selection_id
            assert again.state_version == answer.state_version
            assert [m.tolist() for m in again.masks] == [m.tolist() for m in answer.masks]
        with connect(selectors[0].http_url) as check:
            for run in runs:
                assert_exact(check.get_run(run), [t for t in trained if t.run_id == run])

        # One master dies: its runs fail fast and honestly, the others go on.
        dead_run, live_runs = runs[0], runs[1:]
        dead: ClusterNode = cluster.node_for_key(RunKeys(dead_run).config)
        dead.kill()
        _dead_slot_calls(selectors, dead_run, "refused")
        more = []
        for k, run in enumerate(live_runs * 2):
            client = Trained(100 + k, selectors[k % 2].grpc_url if k % 2
                             else selectors[k % 2].http_url, run)
            client_steps(client, 2)
            more.append(client)
        for selector in selectors:
            assert httpx.get(f"{selector.http_url}/readyz", timeout=30).status_code == 200

        cluster.wait_marked_failed(dead)  # the cluster now knows: same answers
        _dead_slot_calls(selectors, dead_run, "failed")
        for k, run in enumerate(live_runs):
            client = Trained(200 + k, selectors[k % 2].http_url, run)
            client_steps(client, 1)
            more.append(client)
        with connect(selectors[1].http_url) as check:
            for run in live_runs:
                assert_exact(check.get_run(run), [t for t in trained + more if t.run_id == run])
    finally:
        for selector in selectors:
            selector.stop()
            selector.close()
