"""Concurrent trainers against real selectors, and the exact-count check: after N clients made
their selections (and reported outcomes), a run's state_version, outcome_reports and
per-(task, phase) chunk counts must be exactly what the clients were answered. Shared by the
worker-process tests and the Redis Cluster tests.

    trained = run_clients([(url, "run-a"), (url2, "run-b"), ...], steps=6)
    assert_exact(client.get_run("run-a"), [t for t in trained if t.run_id == "run-a"])
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tests.selector_service.conftest import batch
from trainer_client import connect

TASKS = ("pick", "place", "push")
PHASES = 4  # batch() makes 4 phases


@dataclass
class Trained:
    """What one client was answered: (request body, answer) per step, its report ids."""

    index: int
    url: str
    run_id: str
    steps: list[tuple[dict[str, Any], Any]] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)


def client_steps(trained: Trained, steps: int, *, new_connection: bool = True,
                 report: bool = True) -> None:
    """`steps` selections (each reported) as client `trained.index`; with `new_connection`,
    every step on a connection of its own (so that SO_REUSEPORT spreads them over workers)."""
    client = None
    try:
        for step in range(steps):
            if client is None or new_connection:
                if client is not None:
                    client.close()
                client = connect(trained.url, retries=0, timeout_s=30.0)
            rid = f"{trained.run_id}-c{trained.index}-s{step}"
            body = batch(rid, seed=trained.index * 1000 + step, tasks=TASKS)
            answer = client.select(trained.run_id, body)
            trained.steps.append((body, answer))
            if report:
                ack = client.report_outcomes(trained.run_id, {
                    "selection_id": answer.selection_id, "request_id": f"{rid}/outcome",
                    "step": step, "success_rate": 0.5})
                assert ack.accepted
                trained.reports.append(f"{rid}/outcome")
    finally:
        if client is not None:
            client.close()


def run_clients(targets: list[tuple[str, str]], steps: int, *, first_index: int = 0,
                **options: Any) -> list[Trained]:
    """One thread per (url, run_id) target, all at once, client indices from `first_index`
    (request ids derive from them); raises the first client error."""
    trained = [Trained(i, url, run) for i, (url, run) in enumerate(targets, first_index)]
    errors: list[BaseException] = []

    def work(t: Trained) -> None:
        try:
            client_steps(t, steps, **options)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in trained]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not any(t.is_alive() for t in threads), "a client hung"
    if errors:
        raise errors[0]
    return trained


def expected_counts(trained: list[Trained]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Per task: chunks per phase, and kept chunks per phase, over every answer."""
    total = {t: np.zeros(PHASES, np.int64) for t in TASKS}
    kept = {t: np.zeros(PHASES, np.int64) for t in TASKS}
    for client in trained:
        for body, answer in client.steps:
            for traj, mask in zip(body["trajectories"], answer.masks, strict=True):
                phases = np.asarray(traj["phase_ids"])
                np.add.at(total[traj["task_id"]], phases, 1)
                np.add.at(kept[traj["task_id"]], phases, np.asarray(mask, np.int64))
    return ({t: v.tolist() for t, v in total.items()}, {t: v.tolist() for t, v in kept.items()})


def assert_exact(info: Any, trained: list[Trained]) -> None:
    """`info` (RunInfo of the run) counts exactly the selections and reports of `trained`."""
    steps = sum(len(t.steps) for t in trained)
    assert info.state_version == steps
    assert info.outcome_reports == sum(len(t.reports) for t in trained)
    total, kept = expected_counts(trained)
    assert {t: s.chunks_total for t, s in info.tasks.items()} == total
    assert {t: s.chunks_kept for t, s in info.tasks.items()} == kept
    # Every answer has its own state_version: no two selections committed on the same state.
    versions = sorted(a.state_version for t in trained for _, a in t.steps)
    assert versions == list(range(1, steps + 1))
