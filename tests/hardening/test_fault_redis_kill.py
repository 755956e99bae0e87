"""Fault test: a real redis-server with AOF `appendfsync everysec` is
SIGKILLed and restarted while 8 clients (4 gRPC, 4 HTTP, with the local fallback) select,
"train" and report. Afterwards the run's state_version and per-(task, phase) chunk counts are
exactly what the clients trained on (the answers they used, local or not), and every outcome
report is counted exactly once.

While Redis is down the selector answers UNAVAILABLE / 503: the clients retry, then select
locally and train on that, and replay those batches (with the masks they trained on) and their
reports once it is back; a selection the service committed but could not answer in time is
reconciled to the client's masks (trainer_client/clients/replay_log.py). A SIGKILL of
redis-server loses no acknowledged write, as Redis writes the AOF before it answers;
`test_writes_a_restarted_store_lost_are_replayed` covers a store that does lose some, as a host
crash with `everysec` would. About 10-15 s.
    python -m pytest tests/hardening/test_fault_redis_kill.py -q
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pcm_bench.servers import RedisServer
from selector_service.service import SelectorService
from selector_service.settings import Settings
from selector_service.store import MemoryStore
from selector_service.store.redis_store import RedisStore
from tests.fixtures.servers import ServerThread
from tests.hardening.conftest import serving
from tests.selector_service.conftest import batch
from trainer_client import connect

CLIENTS = 8
STEPS = 14
PHASES = 4
RUN = "fault"
OUTAGE_S = 1.5


def _trainer(index: int, url: str, out: dict[int, list[tuple[dict[str, Any], Any]]],
             reports: dict[int, list[str]], errors: list[BaseException]) -> None:
    try:
        with connect(url, timeout_s=3.0, retries=2, backoff_s=0.05, max_backoff_s=0.2,
                     fallback=True) as client:
            client.get_run(RUN)  # learn the config (for a local fallback)
            for step in range(STEPS):
                body = batch(f"c{index}-s{step}", seed=index * 100 + step,
                             tasks=("pick", "place", "push"))
                answer = client.select(RUN, body)
                out[index].append((body, answer))  # what this trainer trains on
                time.sleep(0.05)  # the "backward"
                rid = f"c{index}-s{step}/outcome"
                ack = client.report_outcomes(RUN, {"selection_id": answer.selection_id,
                                                   "request_id": rid, "step": step,
                                                   "success_rate": 0.5})
                assert ack.accepted
                reports[index].append(rid)
            client.settle(RUN)  # what was acknowledged last is durable, or replayed
            assert client.pending == 0
    except BaseException as exc:  # surfaced to the test thread
        errors.append(exc)


@pytest.mark.parametrize("inline_chunks", [0, 4096], ids=["threaded", "inline"])
def test_redis_sigkill_mid_run_loses_and_doubles_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, inline_chunks: int) -> None:
    """Both gRPC select paths: every Select in a worker thread, and small ones on the event
    loop while the store answers (grpc_inline_select_chunks)."""
    caplog.set_level(logging.WARNING, logger="trainer_client.clients")
    # AOF with `appendfsync everysec` (explicitly); kill() is a SIGKILL: no AOF flush, no shutdown
    redis_server = RedisServer(data_dir=tmp_path / "redis", appendonly=True,
                               options={"appendfsync": "everysec"})
    with redis_server, serving(store="redis", redis_url=redis_server.url, auth_tokens="",
                    worker_threads=8, grpc_inline_select_chunks=inline_chunks) as srv:
        with connect(srv.http_url) as admin:
            admin.put_run(RUN, phases=PHASES, feature_dim=4, keep_fraction=0.25, seed=11)
        trained: dict[int, list[tuple[dict[str, Any], Any]]] = {i: [] for i in range(CLIENTS)}
        reports: dict[int, list[str]] = {i: [] for i in range(CLIENTS)}
        errors: list[BaseException] = []
        urls = [f"grpc://{srv.grpc_target}" if i % 2 else srv.http_url for i in range(CLIENTS)]
        threads = [threading.Thread(target=_trainer, args=(i, urls[i], trained, reports, errors))
                   for i in range(CLIENTS)]
        for t in threads:
            t.start()
        # Kill Redis once the clients are well into their run, then bring it back.
        deadline = time.monotonic() + 60
        while sum(map(len, trained.values())) < CLIENTS * STEPS // 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        done_at_kill = sum(map(len, trained.values()))
        redis_server.kill()
        time.sleep(OUTAGE_S)
        redis_server.start()  # same port, same AOF
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert done_at_kill < CLIENTS * STEPS  # the kill happened mid-run

        with RedisStore(redis_server.url) as store:
            snapshot = store.load(RUN)
            history = store.history(RUN, 100_000)
    assert snapshot is not None
    answers = [a for runs in trained.values() for _, a in runs]
    local = sum(a.selection_id.startswith("local-") for a in answers)
    replayed = caplog.text.count("store restarted")
    assert local + replayed > 0, "the outage was never noticed"

    # state_version: one per batch trained on.
    assert snapshot.state_version == CLIENTS * STEPS
    # Per (task, phase): chunks and kept chunks exactly as trained on.
    total = {t: np.zeros(PHASES, np.int64) for t in ("pick", "place", "push")}
    kept = {t: np.zeros(PHASES, np.int64) for t in ("pick", "place", "push")}
    for runs in trained.values():
        for body, answer in runs:
            for traj, mask in zip(body["trajectories"], answer.masks, strict=True):
                phases = np.asarray(traj["phase_ids"])
                np.add.at(total[traj["task_id"]], phases, 1)
                np.add.at(kept[traj["task_id"]], phases, mask.astype(np.int64))
    for task, state in snapshot.tasks.items():
        assert state.chunks_total.tolist() == total[task].tolist(), task
        assert state.chunks_kept.tolist() == kept[task].tolist(), task
    # Every report counted once: none lost, none twice.
    sent = sorted(r for rs in reports.values() for r in rs)
    assert snapshot.outcome_reports == len(sent) == CLIENTS * STEPS
    recorded = sorted(h["request_id"] for h in history if h["type"] == "report")
    assert recorded == sent


def test_writes_a_restarted_store_lost_are_replayed() -> None:
    """A store that comes back without its last acknowledged writes (a host crash with AOF
    everysec, or a failover to a lagging replica; a SIGKILL alone keeps them, in the page
    cache) answers under a new store_epoch: the client replays what it was acknowledged
    shortly before, and the run again counts exactly what was trained on."""
    store = MemoryStore()
    srv = ServerThread(Settings(host="127.0.0.1", grpc_port=0, http_port=0, worker_threads=4,
                                grace_period_s=1.0), service=SelectorService(store)).start()
    run = "crash"
    bodies, answers = [], []
    try:
        with connect(srv.http_url) as client:
            client.put_run(run, phases=PHASES, feature_dim=4, keep_fraction=0.25, seed=2)

            def step(k: int) -> None:
                bodies.append(batch(f"crash-{k}", seed=k))
                answers.append(client.select(run, bodies[-1]))
                client.report_outcomes(run, {"selection_id": answers[-1].selection_id,
                                             "request_id": f"crash-{k}/outcome",
                                             "success_rate": 0.5})

            step(0)
            on_disk = copy.deepcopy(store._runs)  # what survives the crash
            step(1)
            with store._lock:  # the store restarts without step 1, as a new incarnation
                store._runs = on_disk
                store._epoch = "memory-after-crash"
            # Step 1 is gone; this answer's new epoch makes the client replay it.
            assert client.get_run(run).state_version == 1
            step(2)
            info = client.get_run(run)
            assert client.pending == 0
    finally:
        srv.stop()
    assert info.state_version == 3 and info.outcome_reports == 3
    kept = {t: np.zeros(PHASES, np.int64) for t in info.tasks}
    for body, answer in zip(bodies, answers, strict=True):
        for traj, mask in zip(body["trajectories"], answer.masks, strict=True):
            np.add.at(kept[traj["task_id"]], np.asarray(traj["phase_ids"]),
                      mask.astype(np.int64))
    assert {t: s.chunks_kept for t, s in info.tasks.items()} == {
        t: k.tolist() for t, k in kept.items()}
