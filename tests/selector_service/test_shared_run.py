"""64 trainers on one run: `pcm-selector serve --workers 2` over a real redis-server, 64
concurrent clients (half gRPC, half HTTP) selecting and reporting on the same run. No call
fails; state_version, outcome reports and per-(task, phase) chunk counts are exact; selections
were computed on states a few commits old and folded in without being computed again; and
every request_id, sent again, gets its stored answer and changes nothing.

    python -m pytest tests/selector_service/test_shared_run.py -q
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from pcm_bench.servers import SelectorProcess
from tests.selector_service.exact_counts import TASKS, assert_exact, run_clients
from tests.selector_service.test_workers import samples
from trainer_client import connect

CLIENTS = 64
STEPS = 3
RUN = "shared-64"


@pytest.mark.timeout(600)
def test_64_clients_on_one_run_over_two_workers_count_exactly_and_replay(
        redis_url: str, tmp_path: Path) -> None:
    with SelectorProcess(store="redis", redis_url=redis_url, workers=2,
                         log_dir=tmp_path) as selector:
        with connect(selector.http_url) as admin:
            admin.put_run(RUN, phases=4, feature_dim=4, keep_fraction=0.25, seed=5)
        urls = [selector.grpc_url if i % 2 else selector.http_url for i in range(CLIENTS)]
        trained = run_clients([(url, RUN) for url in urls], STEPS, new_connection=False)
        made = CLIENTS * STEPS
        with connect(selector.http_url) as admin:
            info = admin.get_run(RUN)
        assert_exact(info, trained)
        assert set(info.tasks) == set(TASKS)
        answers = [answer for t in trained for _, answer in t.steps]
        assert len(answers) == made
        # the selections were computed on states that lacked commits, and still count exactly
        assert max(a.staleness for a in answers) > 0
        print(f"\n{made} selects, staleness max {max(a.staleness for a in answers)}, "
              f"mean {sum(a.staleness for a in answers) / made:.1f}")
        text = httpx.get(f"{selector.http_url}/metrics").text
        staleness = samples(text, "pcm_select_staleness_count")
        assert sum(staleness.values()) == made
        assert sum(samples(text, "pcm_select_conflicts_total").values()) == 0
        assert sum(v for k, v in samples(text, "pcm_select_requests_total").items()
                   if dict(k)["status"] != "OK") == 0

        # every request_id again, concurrently: its stored answer, nothing changes
        errors: list[BaseException] = []

        def replay(k: int) -> None:
            try:
                with connect(urls[k], retries=0, timeout_s=60.0) as client:
                    for body, answer in trained[k].steps:
                        again = client.select(RUN, body)
                        assert again.same_as(answer), body["request_id"]
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=replay, args=(k,)) for k in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not any(t.is_alive() for t in threads), "a replay hung"
        assert not errors, errors[0]
        with connect(selector.http_url) as admin:
            assert admin.get_run(RUN).model_dump() == info.model_dump()
        assert selector.stop() == 0
