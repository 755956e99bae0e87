"""8 trainers x 50 selects on one run through two selector processes sharing one Redis: no
update is lost, counts add up, and a replayed request_id changes nothing."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pcm_bench.servers import SelectorProcess
from pcm_contract.models import SelectResponse
from tests.trainer_client.clients.conftest import small_batch
from trainer_client import connect

CLIENTS = 8
SELECTS = 50
CONFIG = {"phases": 3, "feature_dim": 4, "keep_fraction": 0.5, "seed": 11}


@pytest.fixture
def two_selectors(redis_url: str, tmp_path: Path) -> Iterator[list[SelectorProcess]]:
    selectors = [SelectorProcess(store="redis", redis_url=redis_url, log_dir=tmp_path / str(k))
                 for k in range(2)]
    try:
        for selector in selectors:
            selector.start()
        yield selectors
    finally:
        for selector in selectors:
            selector.stop()


def test_concurrent_trainers_on_two_selectors(two_selectors: list[SelectorProcess]) -> None:
    urls = [s.grpc_url for s in two_selectors] + [s.http_url for s in two_selectors]
    with connect(urls[0]) as admin:
        admin.put_run("shared", **CONFIG)

    answers: dict[str, SelectResponse] = {}
    submitted: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(3, dtype=np.int64))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def trainer(k: int) -> None:
        try:
            with connect(urls[k % len(urls)]) as client:
                for step in range(SELECTS):
                    request_id = f"t{k}-s{step}"
                    batch = small_batch(request_id, seed=k * 1000 + step, trajectories=4,
                                        chunks=5)
                    answer = client.select("shared", batch)
                    with lock:
                        answers[request_id] = answer
                        for t in batch["trajectories"]:
                            submitted[t["task_id"]] += np.bincount(t["phase_ids"], minlength=3)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=trainer, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(answers) == CLIENTS * SELECTS
    # Every committed select got its own state_version: 1..400, none lost or doubled.
    assert sorted(a.state_version for a in answers.values()) == list(range(1, 401))

    with connect(urls[1]) as client:
        info = client.get_run("shared")
        assert info.state_version == CLIENTS * SELECTS
        assert {t: s.chunks_total for t, s in info.tasks.items()} == {
            t: c.tolist() for t, c in submitted.items()}
        kept = {t: s.chunks_kept for t, s in info.tasks.items()}

        # A replay, through the other selector and transport, gets the stored answer.
        replay = client.select("shared", small_batch("t3-s7", seed=3 * 1000 + 7, trajectories=4,
                                                     chunks=5))
        assert replay.same_as(answers["t3-s7"])
        after = client.get_run("shared")
        assert after.state_version == CLIENTS * SELECTS
        assert {t: s.chunks_total for t, s in after.tasks.items()} == {
            t: c.tolist() for t, c in submitted.items()}
        assert {t: s.chunks_kept for t, s in after.tasks.items()} == kept
