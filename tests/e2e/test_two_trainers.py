"""Selector service end to end: one `pcm-selector serve` on a real redis-server (PCM_STORE=redis)
and two `pcm-train rl --selector grpc://...` processes training the SAME run concurrently, under
distinct trainer ids. Both finish, both progress, and both move the run's shared phase state:
every selection of either trainer is committed (state_version = all steps of both), the history
holds both trainers' selects and reports, the task's counters add up over both batches, and the
keep probabilities are no longer uniform.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import (
    PHASES,
    TASK_ID,
    Trainers,
    assert_ran_concurrently,
    assert_trainers_succeeded,
    history_entries,
)
from trainer_client import connect

RUN_ID = "e2e-two-trainers"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_trainers_share_one_run(redis_url, selector_factory, trainers: Trainers) -> None:
    selector = selector_factory(redis_url)
    grpc_url = f"grpc://127.0.0.1:{selector.grpc_port}"
    pair = [
        trainers.spec(grpc_url, RUN_ID, "trainer-a", seed=1),
        trainers.spec(grpc_url, RUN_ID, "trainer-b", seed=2),
    ]

    trainers.run_concurrently(pair)

    # Both finished, at the same time, and both progressed: a metrics row per step.
    assert_trainers_succeeded(pair)
    assert_ran_concurrently(pair)
    rows = {t.trainer_id: t.step_rows() for t in pair}
    for trainer in pair:
        got = [r["step"] for r in rows[trainer.trainer_id]]
        assert got == list(range(1, trainer.extra["steps"] + 1)), (
            f"{trainer.trainer_id} wrote step rows {got}:\n{trainer.log_tail()}"
        )
    total_steps = sum(t.extra["steps"] for t in pair)

    # The run's history: every select and every outcome report of both trainers, once each.
    history = history_entries(redis_url, RUN_ID)
    selects = [e for e in history if e["type"] == "select"]
    reports = [e for e in history if e["type"] == "report"]
    for trainer in pair:
        steps = list(range(1, trainer.extra["steps"] + 1))
        assert (
            sorted(e["step"] for e in selects if e["trainer_id"] == trainer.trainer_id) == steps
        ), f"selects of {trainer.trainer_id} in the history: {selects}"
        assert (
            sorted(e["step"] for e in reports if e["trainer_id"] == trainer.trainer_id) == steps
        ), f"reports of {trainer.trainer_id} in the history: {reports}"
    # Each select committed on top of the previous one, whichever trainer made it.
    assert [e["state_version"] for e in selects] == list(range(1, total_steps + 1))
    # The answers the trainers got are those the selector recorded.
    for trainer in pair:
        mine = {e["step"]: e for e in selects if e["trainer_id"] == trainer.trainer_id}
        for row in rows[trainer.trainer_id]:
            assert row["kept_chunks"] == mine[row["step"]]["kept_chunks"]
            assert row["total_chunks"] == mine[row["step"]]["total_chunks"]

    # The run's state, through the SDK over gRPC.
    with connect(grpc_url) as client:
        run = client.get_run(RUN_ID)
    assert run.state_version == total_steps
    assert run.outcome_reports == total_steps
    assert set(run.tasks) == {TASK_ID}
    task = run.tasks[TASK_ID]
    # The task's counters are the sums over both trainers' batches: nothing lost.
    assert task.state_version == total_steps
    assert task.trajectories == sum(t.extra["trajectories"] for t in pair)
    assert sum(task.chunks_total) == sum(r["total_chunks"] for rs in rows.values() for r in rs)
    assert sum(task.chunks_kept) == sum(r["kept_chunks"] for rs in rows.values() for r in rs)
    assert task.skipped_trajectories == sum(
        r["skipped_trajectories"] for rs in rows.values() for r in rs
    )
    # Both trainers' batches were informative (GRPO groups with both outcomes) somewhere, so
    # both contributed chunks for backward and phase observations.
    for trainer in pair:
        assert sum(r["kept_chunks"] for r in rows[trainer.trainer_id]) > 0, (
            f"{trainer.trainer_id} never had an informative group: {rows[trainer.trainer_id]}"
        )
    assert sum(task.observations) > 0
    # The keep probabilities moved off uniform (and still form a distribution over phases).
    assert len(task.keep_probs) == PHASES
    assert sum(task.keep_probs) == pytest.approx(1.0)
    assert max(task.keep_probs) - min(task.keep_probs) > 1e-3, (
        f"keep probabilities still uniform after both trainers: {task.keep_probs}"
    )
    last = selects[-1]
    last_row = next(r for r in rows[last["trainer_id"]] if r["step"] == last["step"])
    config = run.config.model_dump()  # RunConfigOut's fields come from the run-config schema
    if config["budget_rule"] == "fixed":
        # The last committed selection answered the keep probabilities the run now holds.
        assert last_row["keep_probs"] == pytest.approx(task.keep_probs)
    else:
        # pcm-train's adaptive budget: the answer's keep probabilities are the phase shares of
        # that batch's inclusion probabilities (docs/design.md, step 4a), a distribution too.
        assert config["budget_rule"] == "auto" and config["weighting"] == "ht"
        assert sum(last_row["keep_probs"]) == pytest.approx(1.0)
