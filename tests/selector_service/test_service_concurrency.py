"""Concurrent selects through two SelectorService instances over one store: no lost update,
exact per-phase counts, selections computed on states a few commits old and folded in without
being computed again, and replays that return the identical answer and change nothing.

With Redis, the two services have their own RedisStore (own connection pool) on one Redis: two
selector processes in miniature."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from pcm_contract.models import SelectResponse
from selector_service.service import SelectorService
from selector_service.store import CommitResult, CommitStatus, MemoryStore
from selector_service.store.redis_store import RedisStore

RUN = "concurrent"
THREADS = 8
PER_THREAD = 50
PHASES = 4
DIM = 8
TASKS = ("pick", "place", "push")


def make_request(request_id: str, seed: int, n: int = 8, chunks: int = 16,
                 dim: int = DIM) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A select request (groups of 4 with mixed outcomes, each group on one task) and its chunk
    counts per task and phase."""
    rng = np.random.default_rng(seed)
    counts: dict[str, np.ndarray] = {}
    trajectories = []
    for i in range(n):
        task = TASKS[(seed + i // 4) % len(TASKS)]
        phase_ids = rng.integers(0, PHASES, chunks)
        counts[task] = counts.get(task, np.zeros(PHASES, np.int64)) + np.bincount(
            phase_ids, minlength=PHASES)
        trajectories.append({"task_id": task, "group_id": f"g{i // 4}", "success": i % 2 == 0,
                             "phase_ids": phase_ids, "action_features": rng.normal(
                                 size=(chunks, dim))})
    return {"request_id": request_id, "trainer_id": f"trainer-{seed % 3}", "step": seed,
            "trajectories": trajectories}, counts


class ConflictCounter:
    """Wraps a store's commit_select to count STALE answers, the selections computed again
    (thread-safe)."""

    def __init__(self) -> None:
        self.conflicts = 0
        self.refused_within_bound = 0  # STALE although the state was within the bound
        self._lock = threading.Lock()

    def wrap(self, store: Any) -> Any:
        commit = store.commit_select

        def counted(run_id: str, request_id: str, read: int, *args: Any,
                    **kwargs: Any) -> CommitResult:
            result: CommitResult = commit(run_id, request_id, read, *args, **kwargs)
            if result.status is CommitStatus.STALE:
                bound = kwargs.get("max_staleness")
                # state_version only grows: the store's now is at least what it refused
                current = store.load(run_id, []).state_version
                with self._lock:
                    self.conflicts += 1
                    if bound is None or current - read <= bound:
                        self.refused_within_bound += 1
            return result

        store.commit_select = counted
        return store


@pytest.fixture
def conflicts() -> ConflictCounter:
    return ConflictCounter()


@pytest.fixture(params=["redis", "memory"])
def services(request: pytest.FixtureRequest,
             conflicts: ConflictCounter) -> Iterator[tuple[SelectorService, SelectorService]]:
    if request.param == "memory":
        shared = conflicts.wrap(MemoryStore())
        yield SelectorService(shared), SelectorService(shared)
        return
    url = request.getfixturevalue("redis_url")
    stores = conflicts.wrap(RedisStore(url)), conflicts.wrap(RedisStore(url))
    yield SelectorService(stores[0]), SelectorService(stores[1])
    for store in stores:
        store.close()


@pytest.mark.timeout(180)
def test_concurrent_selects_lose_no_update(
        services: tuple[SelectorService, SelectorService], conflicts: ConflictCounter) -> None:
    first, second = services
    first.put_run(RUN, phases=PHASES, feature_dim=DIM, keep_fraction=0.25)
    requests = {f"t{i}-{j}": make_request(f"t{i}-{j}", seed=i * PER_THREAD + j)
                for i in range(THREADS) for j in range(PER_THREAD)}
    answers: dict[str, SelectResponse] = {}
    start = threading.Barrier(THREADS)

    def worker(i: int) -> None:
        service = services[i % 2]
        start.wait()
        for j in range(PER_THREAD):
            rid = f"t{i}-{j}"
            answers[rid] = service.select(RUN, requests[rid][0])

    with ThreadPoolExecutor(THREADS) as pool:
        for future in [pool.submit(worker, i) for i in range(THREADS)]:
            future.result(timeout=150)

    total = THREADS * PER_THREAD
    if isinstance(first.store, RedisStore):  # selections really were computed on stale states
        assert max(a.staleness for a in answers.values()) > 0
    # a selection is computed again only when its state was beyond the staleness bound
    assert conflicts.refused_within_bound == 0
    info = second.get_run(RUN)
    assert info.state_version == total
    # every commit got its own version: none was lost or applied twice
    assert sorted(a.state_version for a in answers.values()) == list(range(1, total + 1))
    history = first.history(RUN, count=10 * total)
    assert [h["state_version"] for h in history] == list(range(1, total + 1))

    expected: dict[str, np.ndarray] = {t: np.zeros(PHASES, np.int64) for t in TASKS}
    batches = dict.fromkeys(TASKS, 0)
    for _, counts in requests.values():
        for task, c in counts.items():
            expected[task] += c
            batches[task] += 1
    assert set(info.tasks) == set(TASKS)
    for task in TASKS:
        assert info.tasks[task].chunks_total == expected[task].tolist(), task
        assert info.tasks[task].state_version == batches[task]
    assert sum(sum(t.chunks_kept) for t in info.tasks.values()) == sum(
        a.kept_chunks for a in answers.values())

    _replays_change_nothing(services, requests, answers)


def _replays_change_nothing(services: tuple[SelectorService, SelectorService],
                            requests: dict[str, tuple[dict[str, Any], Any]],
                            answers: dict[str, SelectResponse]) -> None:
    before = services[0].get_run(RUN).model_dump()
    history_len = len(services[0].history(RUN, count=100_000))
    ids = sorted(answers)

    def replay(k: int) -> None:
        for rid in ids[k::THREADS]:
            again = services[(k + 1) % 2].select(RUN, requests[rid][0])
            assert again.same_as(answers[rid]), rid

    with ThreadPoolExecutor(THREADS) as pool:
        for future in [pool.submit(replay, k) for k in range(THREADS)]:
            future.result(timeout=60)
    assert services[1].get_run(RUN).model_dump() == before
    assert len(services[1].history(RUN, count=100_000)) == history_len
