"""The application layer over the in-memory store: runs, idempotent select, validation that
never changes stored state."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pcm_contract.errors import Conflict, InvalidArgument, NotFound
from pcm_contract.models import MAX_TRAJECTORIES
from selector_service.service import SelectorService
from selector_service.store import MemoryStore


def _request(request_id: str = "r1", n: int = 8, c: int = 6, d: int = 4,
             seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "request_id": request_id,
        "trainer_id": "trainer-0",
        "step": 3,
        "trajectories": [
            {"task_id": "pick", "group_id": f"g{i // 4}", "success": i % 2 == 0,
             "phase_ids": (np.arange(c) * 4 // c).tolist(),
             "action_features": rng.normal(size=(c, d)).tolist()}
            for i in range(n)
        ],
    }


@pytest.fixture
def service() -> SelectorService:
    svc = SelectorService(MemoryStore())
    svc.put_run("run-a", feature_dim=4)
    return svc


def test_put_get_delete(service: SelectorService) -> None:
    info = service.get_run("run-a")
    assert info.config.feature_dim == 4 and info.config.keep_fraction == 0.2
    assert info.state_version == 0 and info.tasks == {}
    updated = service.put_run("run-a", keep_fraction=0.5)
    assert updated.config.keep_fraction == 0.5 and updated.config.feature_dim == 4
    assert service.delete_run("run-a").deleted
    with pytest.raises(NotFound):
        service.get_run("run-a")
    with pytest.raises(NotFound):
        service.delete_run("run-a")


def test_select_returns_aligned_masks_and_updates_state(service: SelectorService) -> None:
    req = _request()
    ans = service.select("run-a", req)
    assert len(ans.masks) == 8 and all(m.shape == (6,) for m in ans.masks)
    assert ans.kept_chunks == sum(int(m.sum()) for m in ans.masks) == 8  # k = round(0.2*6) = 1
    assert ans.total_chunks == 48 and ans.state_version == 1
    info = service.get_run("run-a")
    assert info.state_version == 1
    task = info.tasks["pick"]
    assert sum(task.chunks_total) == 48 and sum(task.chunks_kept) == 8
    assert np.isclose(sum(task.keep_probs), 1.0)


def test_replayed_request_gets_the_stored_answer_and_changes_nothing(
        service: SelectorService) -> None:
    first = service.select("run-a", _request("same"))
    before = service.get_run("run-a")
    again = service.select("run-a", _request("same"))
    assert again.same_as(first)
    assert service.get_run("run-a") == before
    # The same request_id with another body is a conflict.
    with pytest.raises(Conflict) as exc:
        service.select("run-a", _request("same", seed=99))
    assert exc.value.field == "request_id"
    assert service.get_run("run-a") == before
    assert service.select("run-a", _request("other")).state_version == 2


def test_report_outcomes_is_idempotent(service: SelectorService) -> None:
    ans = service.select("run-a", _request())
    report = {"selection_id": ans.selection_id, "request_id": "rep-1", "trainer_id": "t0",
              "step": 0, "success_rate": 0.5, "loss": 0.1, "kept_chunks": ans.kept_chunks,
              "timings": {"rollout_s": 1.0, "select_s": 0.01, "backward_s": 2.0}}
    assert service.report_outcomes("run-a", report).accepted
    assert service.report_outcomes("run-a", report).accepted
    assert service.get_run("run-a").outcome_reports == 1
    with pytest.raises(Conflict) as info:
        service.report_outcomes("run-a", {**report, "request_id": "r1"})  # a select's id
    assert info.value.field == "request_id"


def _bad(req: dict[str, Any], path: tuple, value: Any) -> dict[str, Any]:
    import copy

    out = copy.deepcopy(req)
    target = out
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return out


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: _bad(r, ("trajectories", 2, "action_features", 1, 0), float("nan")),
         "trajectories[2].action_features"),
        (lambda r: _bad(r, ("trajectories", 2, "action_features", 1, 0), float("inf")),
         "trajectories[2].action_features"),
        (lambda r: _bad(r, ("trajectories", 1, "action_features", 3), [1.0, 2.0]),
         "trajectories[1].action_features"),
        (lambda r: _bad(r, ("trajectories", 0, "phase_ids", 0), 4),
         "trajectories[0].phase_ids"),
        (lambda r: _bad(r, ("trajectories", 3, "action_features"), [[0.0] * 5] * 6),
         "trajectories[3].action_features"),
        (lambda r: _bad(r, ("trajectories",), []), "trajectories"),
        (lambda r: _bad(r, ("keep_fraction",), 0.0), "keep_fraction"),
        (lambda r: _bad(r, ("keep_fraction",), 1.01), "keep_fraction"),
        (lambda r: _bad(r, ("trajectories", 0, "success"), "maybe"),
         "trajectories[0].success"),
        (lambda r: _bad(r, ("trajectories", 0, "task_id"), "bad{id}"),
         "trajectories[0].task_id"),
        (lambda r: _bad(r, ("trajectories",), r["trajectories"][:1] * (MAX_TRAJECTORIES + 1)),
         "trajectories"),
        (lambda r: {k: v for k, v in r.items() if k != "request_id"}, "request_id"),
    ],
)
def test_bad_input_is_rejected_and_state_unchanged(service: SelectorService, mutate: Any,
                                                   field: str) -> None:
    service.select("run-a", _request("warm-up"))
    before = service.get_run("run-a")
    with pytest.raises(InvalidArgument) as info:
        service.select("run-a", mutate(_request("bad")))
    assert info.value.field == field, info.value
    assert service.get_run("run-a") == before
    # The rejected request_id was not consumed: the same id with a good body works.
    assert service.select("run-a", _request("bad")).state_version == before.state_version + 1


def test_unknown_run_and_bad_run_ids(service: SelectorService) -> None:
    with pytest.raises(NotFound, match="nope"):
        service.select("nope", _request())
    with pytest.raises(InvalidArgument) as info:
        service.get_run("bad{run}")
    assert info.value.field == "run_id"


@pytest.mark.parametrize(("config", "field"), [({"keep_fraction": 0.0}, "keep_fraction"),
                                               ({"keep_fraction": 2}, "keep_fraction"),
                                               ({"phases": 0}, "phases"),
                                               ({"weighting": "x"}, "weighting"),
                                               ({"bogus": 1}, "bogus")])
def test_bad_run_config_is_rejected_and_stored_config_kept(service: SelectorService,
                                                           config: dict, field: str) -> None:
    before = service.get_run("run-a")
    with pytest.raises(InvalidArgument) as info:
        service.put_run("run-a", config)
    assert info.value.field == field
    assert service.get_run("run-a") == before


def test_structural_config_is_frozen_once_the_run_has_state(service: SelectorService) -> None:
    service.select("run-a", _request())
    before = service.get_run("run-a")
    for change in ({"phases": 5}, {"feature_dim": 8}):
        with pytest.raises(InvalidArgument) as info:
            service.put_run("run-a", change)
        assert info.value.field in change
    assert service.get_run("run-a") == before
    assert service.put_run("run-a", eps=0.3).config.eps == 0.3  # the rest may change


def test_the_answer_says_which_budget_the_batch_chose(service: SelectorService) -> None:
    """A fixed budget: kept / informative chunks, no prediction. The adaptive budget: its
    kept fraction and its predicted efficiency, at least the run's target."""
    fixed = service.select("run-a", _request("fixed"))
    assert fixed.keep_fraction == pytest.approx(fixed.kept_chunks / 48)  # every group mixed
    assert fixed.predicted_efficiency is None
    service.put_run("run-auto", feature_dim=4, budget_rule="auto", weighting="ht",
                    target_efficiency=0.7)
    auto = service.select("run-auto", _request("auto", n=16, seed=3))
    assert auto.keep_fraction == pytest.approx(auto.kept_chunks / (16 * 6))
    assert auto.predicted_efficiency is not None and auto.predicted_efficiency >= 0.7
    # a replay answers the same figures
    again = service.select("run-auto", _request("auto", n=16, seed=3))
    assert (again.keep_fraction, again.predicted_efficiency) == (
        auto.keep_fraction, auto.predicted_efficiency)


def test_the_rate_objective_uses_the_reported_timings(service: SelectorService) -> None:
    """budget_objective rate: the target rule (no predicted rate) until the reports identify
    the step time; a trainer's own reports once it has five, the run's before; then the
    answer says the predicted progress per second against keeping every chunk."""
    service.put_run("run-rate", feature_dim=4, budget_rule="auto", weighting="ht",
                    budget_objective="rate")
    m = 16 * 6  # every group is mixed: 96 informative chunks

    def select(i: int, trainer: str) -> Any:
        return service.select("run-rate", {**_request(f"{trainer}/s{i}", n=16, seed=i),
                                           "trainer_id": trainer})

    def report(ans: Any, i: int, trainer: str, kept: int, rollout_s: float) -> None:
        service.report_outcomes("run-rate", {
            "selection_id": ans.selection_id, "request_id": f"{trainer}/o{i}",
            "trainer_id": trainer, "step": i, "success_rate": 0.5, "loss": 0.0,
            "kept_chunks": kept,  # the timings below are of these kept chunks
            "timings": {"rollout_s": rollout_s, "select_s": 0.0, "backward_s": 0.02 * kept}})

    def rate(ans: Any, rollout_s: float) -> float:
        t = [rollout_s + 0.02 * k for k in (ans.kept_chunks, m)]
        return float(ans.predicted_efficiency * t[1] / t[0])

    for i, kept in enumerate((40, 60, 50, 70, 45)):
        ans = select(i, "t0")
        assert ans.predicted_rate is None and ans.predicted_efficiency >= 0.6
        report(ans, i, "t0", kept, rollout_s=1.0)
    # a trainer without five reports of its own: the run's (t0's) step time
    ans = select(10, "t1")
    assert ans.predicted_rate == pytest.approx(rate(ans, 1.0)) and ans.predicted_rate >= 1.0
    # t1's own five reports: rollouts so long that masking cannot save time
    for i, kept in enumerate((40, 60, 50, 70, 45), start=11):
        report(select(i, "t1"), i, "t1", kept, rollout_s=1000.0)
    ans = select(20, "t1")
    assert (ans.kept_chunks, ans.predicted_rate) == (m, pytest.approx(1.0))
    ans = select(21, "t0")  # t0 keeps its own
    assert ans.predicted_rate == pytest.approx(rate(ans, 1.0))


def test_a_memory_stores_run_state_exports_and_imports_whole(service: SelectorService) -> None:
    """What a trainer's checkpoint carries for the embedded selector: a new store given the
    exported state selects the next batch exactly as the old one does; a malformed state is
    refused and changes nothing."""
    service.select("run-a", _request("r1", seed=1))
    store = service.store
    assert isinstance(store, MemoryStore)
    data = store.export_state("run-a")
    assert data["state_version"] == 1 and set(data["tasks"]) == {"pick"}
    fresh = SelectorService(MemoryStore())
    fresh.put_run("run-a", feature_dim=4)
    fresh_store = fresh.store
    assert isinstance(fresh_store, MemoryStore)
    fresh_store.import_state("run-a", data)
    def info(svc: SelectorService) -> dict[str, Any]:  # the store's epoch names the store
        return svc.get_run("run-a").model_dump(exclude={"store_epoch"})

    assert info(fresh) == info(service)
    a = service.select("run-a", _request("r2", seed=2))
    b = fresh.select("run-a", _request("r2", seed=2))
    assert [m.tolist() for m in a.masks] == [m.tolist() for m in b.masks]
    assert a.state_version == b.state_version == 2
    before = info(fresh)
    for bad in ({}, {**data, "tasks": {"pick": b"\x01garbage"}}, {**data, "revision": "x"}):
        with pytest.raises(ValueError, match="not an exported run state"):
            fresh_store.import_state("run-a", bad)
    assert info(fresh) == before
    with pytest.raises(NotFound):
        fresh_store.import_state("no-such-run", data)
