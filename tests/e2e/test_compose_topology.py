"""The docker-compose.yml topology as plain processes on 127.0.0.1, monitored end to end.

redis-server (AOF, as in compose) <- `pcm-selector serve` (PCM_STORE=redis) <- three
`pcm-train rl --selector grpc://...` trainers (distinct trainer ids, one shared run id, run
concurrently, like `docker compose up --scale trainer=3`, then restarted to resume from their
checkpoints, as a restarted compose service would); a real Prometheus scrapes the selector
with deploy/prometheus/prometheus.yml (targets rewritten to 127.0.0.1, 1 s scrapes) and
evaluates deploy/prometheus/alerts.yml.

Afterwards every PromQL expression of the Grafana dashboard (deploy/grafana/dashboards/pcm.json),
evaluated through Prometheus's HTTP API, returns at least one series with a finite value; the
dashboard's template variables list the run, the task and all three trainers; the alert rules
load and evaluate cleanly; and the run's state (the selector's GET /v1/runs/{run}, and the Redis
history stream) holds the batches of all three trainers.

The "Select error ratio" panel needs Select calls that fail: the test makes two for real (a
Select for a run the selector does not know, over gRPC like the trainers), one before the
trainers start and one after they finish, so the error counter increases within the window.
The predicted rate (budget_objective rate, which the compose trainers do not use) needs a run
with that objective and five outcome reports: the test drives one over HTTP with set timings,
checks its gauge, and deletes it before the template variables are checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import yaml

from pcm_contract.errors import NotFound
from tests.deploy.promql import (
    ALERTS_YML,
    dashboard_queries,
    local_prometheus_config,
    variable_queries,
)
from tests.e2e.conftest import (
    TASK_ID,
    Trainer,
    Trainers,
    assert_ran_concurrently,
    assert_trainers_succeeded,
    history_entries,
)
from tests.fixtures.prometheus import PrometheusServer
from tests.selector_service.conftest import batch, report
from trainer_client import connect

RUN_ID = "e2e-compose"
TRAINER_IDS = ("trainer-1", "trainer-2", "trainer-3")
FIRST_STEPS = 2  # steps before the trainers are restarted (they resume for one more)
# $__rate_interval and friends: a window covering the whole run (Prometheus lives < 2 min).
WINDOWS = {"__rate_interval": "5m", "__interval": "5m", "__range": "5m"}


def bad_select(grpc_url: str) -> None:
    """A Select the selector must refuse (unknown run): status NOT_FOUND on the grpc transport."""
    request = {
        "request_id": "e2e-bad",
        "trainer_id": "prober",
        "step": 1,
        "trajectories": [
            {
                "task_id": TASK_ID,
                "group_id": "g",
                "success": True,
                "phase_ids": [0],
                "action_features": [[0.0] * 32],
            }
        ],
    }
    with connect(grpc_url) as client, pytest.raises(NotFound):
        client.select("e2e-no-such-run", request)


RATE_RUN = "e2e-rate"


def rate_run(http_url: str, scraped: Callable[[], None]) -> float:
    """A run with budget_objective rate: five select-and-report steps whose timings give the
    step time, then a select that predicts a rate; that rate. `scraped` returns once the
    selector was scraped after the first report, so its report counter increases in the
    window (as a live run's does; else PCMNoOutcomeReports would fire for it)."""
    with httpx.Client(base_url=http_url, timeout=10) as http:
        config = {"feature_dim": 4, "budget_rule": "auto", "weighting": "ht",
                  "budget_objective": "rate"}
        assert http.put(f"/v1/runs/{RATE_RUN}", json=config).status_code == 200

        def select(i: int) -> dict[str, Any]:
            r = http.post(f"/v1/runs/{RATE_RUN}/select",
                          json=batch(f"rate-{i}", seed=i, trainer_id="prober"))
            assert r.status_code == 200, r.text
            return dict(r.json())

        for i, kept in enumerate((20, 30, 25, 35, 22)):
            rep = report(select(i)["selection_id"], f"rate-o{i}", trainer_id="prober",
                         kept_chunks=kept, timings={"rollout_s": 1.0, "select_s": 0.0,
                                                    "backward_s": 0.02 * kept})
            assert http.post(f"/v1/runs/{RATE_RUN}/outcomes", json=rep).status_code == 200
            if i == 0:
                scraped()
        rate = select(5)["predicted_rate"]
    assert rate is not None and rate >= 1.0
    return float(rate)


def _has_finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(item["value"][1])) for item in result)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_compose_topology_monitored_end_to_end(
    prometheus_factory, isolated_redis_server, selector_factory, trainers: Trainers
) -> None:
    redis = isolated_redis_server
    selector = selector_factory(redis.url)
    grpc_url = f"grpc://127.0.0.1:{selector.grpc_port}"
    prom: PrometheusServer = prometheus_factory(
        lambda port: local_prometheus_config(
            {"pcm-selector": selector.http_port, "prometheus": port}, scrape_interval="1s"
        )
    )
    prom.wait_for_targets_up("pcm-selector", timeout=30)
    prom.wait_for_targets_up("prometheus", timeout=30)

    # The deploy alert rules are loaded.
    alert_names = {
        r["alert"] for g in yaml.safe_load(ALERTS_YML.read_text())["groups"] for r in g["rules"]
    }
    assert {r["name"] for r in prom.rules()} == alert_names

    # One refused Select, scraped, before the trainers (the second comes after them).
    bad_select(grpc_url)
    prom.wait_for_scrapes("pcm-selector", 2, timeout=30)

    # Three trainers, one run, concurrently (compose: --scale trainer=3), in two waves: the
    # trainers stop after FIRST_STEPS and are restarted to resume from their checkpoints. A rate
    # needs two scrapes of a series with an increase between them, and a short run can start and
    # end between two scrapes; the second wave adds to series Prometheus already holds.
    def wave(steps: int, resume: bool) -> list[Trainer]:
        specs = [
            trainers.spec(grpc_url, RUN_ID, trainer_id, seed=seed, steps=steps, resume=resume)
            for seed, trainer_id in enumerate(TRAINER_IDS, start=1)
        ]
        trainers.run_concurrently(specs)
        assert_trainers_succeeded(specs)
        assert_ran_concurrently(specs)
        for trainer in specs:
            assert [r["step"] for r in trainer.step_rows()] == list(range(1, steps + 1)), (
                trainer.log_tail()
            )
        steps_total = sum(t.extra["steps"] for t in specs)
        prom.wait_until(
            lambda: (
                prom.values(f'sum(pcm_outcome_reports_total{{run="{RUN_ID}",status="accepted"}})')
                == [steps_total]
            ),
            timeout=30,
            what=f"the counters of {steps_total} steps scraped",
        )
        return specs

    wave(FIRST_STEPS, resume=False)
    three = wave(FIRST_STEPS + 1, resume=True)
    total_steps = sum(t.extra["steps"] for t in three)
    bad_select(grpc_url)
    rate = rate_run(selector.http_url,
                    lambda: prom.wait_for_scrapes("pcm-selector", 2, timeout=30))

    # Prometheus has the final figures, then a few more scrapes.
    prom.wait_until(
        lambda: (
            prom.values('sum(pcm_select_requests_total{transport="grpc",status="NOT_FOUND"})')
            == [2]
        ),
        timeout=30,
        what="the second refused select scraped",
    )
    prom.wait_for_scrapes("pcm-selector", 3, timeout=30)

    # ---- every dashboard query returns data --------------------------------------------------
    empty = []
    for values in ({"run": RUN_ID, "task": TASK_ID, "trainer": "|".join(TRAINER_IDS)}, {}):
        for q in dashboard_queries(values=values, intervals=WINDOWS):
            if values and "pcm_predicted_rate" in q.expr:
                continue  # the trainers' run keeps the default objective; RATE_RUN has it
            result = prom.query(q.expr)
            if not _has_finite(result):
                empty.append(
                    f"panel {q.panel_title!r} ({q.ref_id}) with {values or 'All'}: "
                    f"{q.expr} -> {result}"
                )
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
    assert prom.values(f'pcm_predicted_rate{{run="{RATE_RUN}"}}') == [pytest.approx(rate)]
    with httpx.Client(base_url=selector.http_url, timeout=10) as http:
        assert http.delete(f"/v1/runs/{RATE_RUN}").status_code == 200
    prom.wait_until(lambda: not prom.values(f'pcm_selection_rate{{run="{RATE_RUN}"}}'),
                    timeout=30, what="the deleted rate run's series gone")

    # Specific panels show what happened.
    ratio = prom.values(
        'sum by (transport) (rate(pcm_select_requests_total{status!="OK"}[5m]))'
        " / sum by (transport) (rate(pcm_select_requests_total[5m]))"
    )
    assert len(ratio) == 1 and 0 < ratio[0] < 1, ratio  # grpc: 2 refused of total_steps + 2
    assert prom.values('up{job="pcm-selector"}') == [1.0]

    # The template variables list the run, its task and all three trainers.
    expected = {"run": {RUN_ID}, "task": {TASK_ID}, "trainer": set(TRAINER_IDS)}
    for name, (series, label) in variable_queries(values={"run": RUN_ID}).items():
        got = {item["metric"].get(label) for item in prom.query(f"group by ({label}) ({series})")}
        assert got == expected[name], f"variable {name}: {got}"

    # The alert rules evaluate cleanly; the selector is not down.
    rules = {r["name"]: r for r in prom.rules()}
    bad = {n: r.get("lastError") for n, r in rules.items() if r.get("health") != "ok"}
    assert not bad, f"alert rules not evaluating: {bad}"
    assert rules["PCMSelectorDown"]["state"] == "inactive"
    assert rules["PCMNoOutcomeReports"]["state"] == "inactive"

    # ---- the run's state in Redis holds all three trainers' batches --------------------------
    with httpx.Client(base_url=selector.http_url, timeout=10) as http:
        response = http.get(f"/v1/runs/{RUN_ID}")
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["state_version"] == total_steps
    assert run["outcome_reports"] == total_steps
    task = run["tasks"][TASK_ID]
    assert task["state_version"] == total_steps
    assert task["trajectories"] == sum(t.extra["trajectories"] for t in three)
    assert sum(task["chunks_total"]) == sum(r["total_chunks"] for t in three for r in t.step_rows())

    history = history_entries(redis.url, RUN_ID)
    for kind in ("select", "report"):
        by_trainer = {
            tid: sorted(e["step"] for e in history if e["type"] == kind and e["trainer_id"] == tid)
            for tid in TRAINER_IDS
        }
        assert by_trainer == {t.trainer_id: list(range(1, t.extra["steps"] + 1)) for t in three}, (
            f"{kind} entries in the history: {by_trainer}"
        )
    assert [e["state_version"] for e in history if e["type"] == "select"] == list(
        range(1, total_steps + 1)
    )
