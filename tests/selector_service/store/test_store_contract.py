"""The PhaseStore contract, run against MemoryStore and RedisStore (a real redis-server, and a
real 3-master Redis Cluster through a redis+cluster:// URL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from pcm_contract.errors import Conflict, InvalidArgument, NotFound
from pcm_contract.models import OutcomeReport, SelectResponse
from selector_service.core import RunConfig, TaskState
from selector_service.core.fold import StateUpdate, fold_states
from selector_service.store import CommitStatus, MemoryStore, PhaseStore
from selector_service.store import memory as memory_module
from selector_service.store.redis_store import RedisStore
from tests.selector_service.store.updates import state_update, task_update

RUN = "run-1"
CONFIG = RunConfig(phases=4, feature_dim=8)
StoreFactory = Callable[..., PhaseStore]


@pytest.fixture(params=["memory", "redis", "cluster"])
def make_store(request: pytest.FixtureRequest,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[StoreFactory]:
    """A factory of empty stores of one kind; history_maxlen caps the history."""
    stores: list[RedisStore] = []

    def make(history_maxlen: int = 10_000) -> PhaseStore:
        if request.param == "memory":
            monkeypatch.setattr(memory_module, "MAX_HISTORY", history_maxlen)
            return MemoryStore()
        url = request.getfixturevalue("redis_cluster_url" if request.param == "cluster"
                                      else "redis_url")
        store = RedisStore(url, history_maxlen=history_maxlen)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> PhaseStore:
    return make_store()


def task_state(seed: int, phases: int = 4) -> TaskState:
    rng = np.random.default_rng(seed)
    scores = rng.random(phases)
    scores[0] = np.nan  # a phase never observed
    return TaskState(scores=scores,
                     observations=rng.integers(0, 9, phases),
                     chunks_total=rng.integers(0, 99, phases),
                     chunks_kept=rng.integers(0, 9, phases),
                     trajectories=int(rng.integers(0, 50)), skipped_trajectories=3,
                     version=int(rng.integers(1, 9)))


def answer(version: int, seed: int = 0, lengths: tuple[int, ...] = (5, 3, 7)) -> SelectResponse:
    rng = np.random.default_rng(seed)
    masks, weights = [], []
    for n in lengths:
        mask = rng.random(n) < 0.4
        weight = np.where(mask, 1.0 / rng.random(n), 0.0)
        mask.flags.writeable = False
        weight.flags.writeable = False
        masks.append(mask)
        weights.append(weight)
    kept = int(sum(m.sum() for m in masks))
    return SelectResponse(selection_id=f"sel-{seed}", state_version=version, masks=masks,
                          weights=weights, kept_chunks=kept, total_chunks=sum(lengths),
                          skipped_trajectories=1,
                          keep_probs={"a": [0.1, 0.2, 0.3, 0.4], "b": [0.25] * 4})


def report(request_id: str = "rep-1") -> OutcomeReport:
    return OutcomeReport.model_validate({"selection_id": "sel-0", "request_id": request_id,
                                         "success_rate": 0.5})


def update(seed: int = 0, tasks: tuple[str, ...] = ("a", "b"),
           dim: int | None = None) -> StateUpdate:
    """A batch's random update of `tasks` (`dim`: with the `signal` reference's input)."""
    return state_update({t: task_update(seed + i, dim=dim) for i, t in enumerate(tasks)},
                        bias_corrected=dim is not None)


def commit(store: PhaseStore, request_id: str, read: int, upd: StateUpdate | None = None,
           seed: int = 0, **options: Any) -> Any:
    """Commit a selection computed on state_version `read` (its answer: `answer(0, seed)`)."""
    return store.commit_select(RUN, request_id, read, CONFIG,
                               update(seed) if upd is None else upd, answer(0, seed),
                               {"type": "select", "request_id": request_id}, **options)


def stored_tasks(store: PhaseStore) -> dict[str, TaskState]:
    snap = store.load(RUN)
    assert snap is not None
    return snap.tasks


def assert_states(got: dict[str, TaskState], want: dict[str, TaskState]) -> None:
    assert set(got) == set(want)
    for task, state in want.items():
        assert got[task].equals(state), task


def created(store: PhaseStore, config: RunConfig | None = None) -> PhaseStore:
    assert store.put_config(RUN, config or CONFIG) is True
    return store


# -- config ----------------------------------------------------------------------------------------


def test_put_get_config(store: PhaseStore) -> None:
    assert store.get_config(RUN) is None
    created(store)
    assert store.get_config(RUN) == RunConfig(phases=4, feature_dim=8)
    changed = RunConfig(phases=4, feature_dim=8, keep_fraction=0.5, seed=7, mode="random")
    assert store.put_config(RUN, changed) is False
    assert store.get_config(RUN) == changed
    assert store.get_config("other") is None


def test_new_run_starts_at_version_zero(store: PhaseStore) -> None:
    created(store)
    snap = store.load(RUN)
    assert snap is not None
    assert (snap.state_version, snap.outcome_reports, snap.tasks) == (0, 0, {})


def test_replacing_config_keeps_state(store: PhaseStore) -> None:
    created(store)
    assert commit(store, "r1", 0).status is CommitStatus.COMMITTED
    store.put_config(RUN, RunConfig(phases=4, feature_dim=8, eta=0.5))
    snap = store.load(RUN)
    assert snap is not None
    assert snap.state_version == 1 and snap.config.eta == 0.5
    assert_states(snap.tasks, fold_states({}, update(0)))


# -- load / commit -------------------------------------------------------------------------------


def test_commit_folds_the_update_into_the_stored_states(store: PhaseStore) -> None:
    created(store)
    result = commit(store, "r1", 0)
    assert result.status is CommitStatus.COMMITTED
    assert (result.answer.state_version, result.answer.staleness) == (1, 0)
    snap = store.load(RUN)
    assert snap is not None
    assert snap.state_version == 1
    want = fold_states({}, update(0))
    assert_states(snap.tasks, want)
    # a later commit folds into the tasks it names only
    assert commit(store, "r2", 1, update(9, ("b",))).status is CommitStatus.COMMITTED
    snap = store.load(RUN)
    assert snap is not None and snap.state_version == 2
    assert_states(snap.tasks, {**want, **fold_states(want, update(9, ("b",)))})


def test_commits_on_a_stale_state_all_fold_in_commit_order(store: PhaseStore) -> None:
    """Three selections computed on the same state (version 0) commit one after another: each
    batch's statistics enter exactly once, folded in commit order, versions exact, and each
    answer says how many commits its state lacked."""
    created(store)
    answers = [commit(store, f"r{i}", 0, update(10 * i), seed=i) for i in range(3)]
    assert [a.status for a in answers] == [CommitStatus.COMMITTED] * 3
    assert [(a.answer.state_version, a.answer.staleness) for a in answers] == [
        (1, 0), (2, 1), (3, 2)]
    want: dict[str, TaskState] = {}
    for i in range(3):
        want = {**want, **fold_states(want, update(10 * i))}
    assert_states(stored_tasks(store), want)
    # the stored answers and history say the same
    for i, result in enumerate(answers):
        stored = store.get_request(RUN, f"r{i}")
        assert stored is not None and stored[1].same_as(result.answer)
        assert result.answer.same_as(answer(0, i).model_copy(
            update={"state_version": i + 1, "staleness": i}))
    assert [(h["request_id"], h["state_version"], h["staleness"])
            for h in store.history(RUN)] == [("r0", 1, 0), ("r1", 2, 1), ("r2", 3, 2)]


def test_signal_state_round_trips(store: PhaseStore) -> None:
    """The `signal` score's reference sums (P, D) with phases never present (NaN rows) come
    back exactly, folded with the stored reference, and a copy is returned."""
    created(store)
    first, second = update(3, dim=16), update(4, dim=16)
    assert commit(store, "r1", 0, first).status is CommitStatus.COMMITTED
    assert commit(store, "r2", 0, second).status is CommitStatus.COMMITTED
    want = fold_states(fold_states({}, first), second)
    loaded = stored_tasks(store)
    assert_states(loaded, want)
    ref = loaded["a"].signal_ref
    assert ref is not None and ref.shape == (4, 16)
    loaded["a"].signal_ref[0, 0] = 99.0  # type: ignore[index]  # a copy: the store's is kept
    assert_states(stored_tasks(store), want)


def test_load_subset_and_unknown_tasks(store: PhaseStore) -> None:
    created(store)
    commit(store, "r1", 0)
    snap = store.load(RUN, ["b", "never-seen"])
    assert snap is not None and list(snap.tasks) == ["b"]
    snap = store.load(RUN, [])
    assert snap is not None and snap.tasks == {} and snap.state_version == 1


def test_load_returns_copies(store: PhaseStore) -> None:
    created(store)
    commit(store, "r1", 0, update(0, ("a",)))
    snap = store.load(RUN)
    assert snap is not None
    snap.tasks["a"].scores[:] = 42.0
    snap.tasks["a"].chunks_kept += 1
    assert_states(stored_tasks(store), fold_states({}, update(0, ("a",))))


def test_a_state_beyond_the_staleness_bound_is_refused_and_changes_nothing(
        store: PhaseStore) -> None:
    created(store)
    commit(store, "r1", 0)
    commit(store, "r2", 1, update(1))
    before = store.load(RUN)
    # two commits old, bound 1: refused; a state newer than the store's, or of another
    # config: refused whatever the bound
    refused = [commit(store, "r3", 0, max_staleness=1), commit(store, "r3", 5),
               store.commit_select(RUN, "r3", 2, RunConfig(phases=4, feature_dim=8, eta=0.5),
                                   update(0), answer(0), {})]
    for result in refused:
        assert result.status is CommitStatus.STALE and result.answer is None
    after = store.load(RUN)
    assert before is not None and after is not None
    assert after.state_version == 2 and after.revision == before.revision
    assert_states(after.tasks, before.tasks)
    assert store.get_request(RUN, "r3") is None
    assert [h["request_id"] for h in store.history(RUN)] == ["r1", "r2"]
    within = commit(store, "r3", 0, max_staleness=2)
    assert within.status is CommitStatus.COMMITTED and within.answer.staleness == 2


def test_a_state_of_other_phases_is_refused_naming_the_run(store: PhaseStore) -> None:
    created(store)
    commit(store, "r1", 0)
    wrong = state_update({"a": task_update(0, phases=3)}, phases=3)
    with pytest.raises(InvalidArgument) as exc:
        commit(store, "r2", 1, wrong)
    assert exc.value.field == "run_id"
    assert_states(stored_tasks(store), fold_states({}, update(0)))


def test_replay_returns_identical_answer_and_changes_nothing(store: PhaseStore) -> None:
    created(store)
    commit(store, "r1", 0, seed=3)
    before = store.load(RUN)
    # replayed with another version and another update: the stored answer, nothing written
    result = commit(store, "r1", 7, update(99), seed=4)
    assert result.status is CommitStatus.REPLAY
    assert result.answer is not None and result.answer.same_as(answer(1, 3))
    after = store.load(RUN)
    assert before is not None and after is not None
    assert after.state_version == 1 and after.tasks["a"].equals(before.tasks["a"])
    assert len(store.history(RUN)) == 1


def test_stored_answer_is_identical_and_immutable(store: PhaseStore) -> None:
    created(store)
    commit(store, "r1", 0, seed=3)
    stored = store.get_request(RUN, "r1")
    assert stored is not None
    kind, got = stored
    assert kind == "select" and isinstance(got, SelectResponse) and got.same_as(answer(1, 3))
    for mask, weight, ref in zip(got.masks, got.weights, answer(1, 3).weights, strict=True):
        assert mask.dtype == bool and weight.dtype == np.float64
        assert not mask.flags.writeable and not weight.flags.writeable
        assert weight.tobytes() == ref.tobytes()  # bit-identical
    with pytest.raises(ValidationError, match="frozen"):
        got.kept_chunks = 0
    assert store.get_request(RUN, "nope") is None
    assert store.get_request("other-run", "r1") is None


# -- reports and request kinds ---------------------------------------------------------------------


def test_record_report_once(store: PhaseStore) -> None:
    created(store)
    assert store.record_report(RUN, "rep-1", report(), {"type": "report", "n": 1}) is True
    assert store.record_report(RUN, "rep-1", report(), {"type": "report", "n": 2}) is False
    snap = store.load(RUN)
    assert snap is not None and snap.outcome_reports == 1 and snap.state_version == 0
    assert store.get_request(RUN, "rep-1") == ("report", None)
    assert store.history(RUN) == [{"type": "report", "n": 1}]


def test_request_kind_mismatch(store: PhaseStore) -> None:
    created(store)
    commit(store, "sel", 0)
    store.record_report(RUN, "rep", report("rep"), {"type": "report"})
    with pytest.raises(Conflict, match="already used by a select request") as exc:
        store.record_report(RUN, "sel", report("sel"), {"type": "report"})
    assert exc.value.field == "request_id"
    with pytest.raises(Conflict, match="already used by an outcome report") as exc:
        commit(store, "rep", 1)
    assert exc.value.field == "request_id"
    snap = store.load(RUN)
    assert snap is not None and (snap.state_version, snap.outcome_reports) == (1, 1)
    assert len(store.history(RUN)) == 2


# -- history ---------------------------------------------------------------------------------------


def test_history_ordered_newest_count(store: PhaseStore) -> None:
    created(store)
    for v in range(5):
        commit(store, f"r{v}", v)
    store.record_report(RUN, "rep", report("rep"), {"type": "report", "request_id": "rep",
                                                     "loss": 0.25, "nested": {"x": [1, 2]}})
    history = store.history(RUN)
    assert [h["request_id"] for h in history] == ["r0", "r1", "r2", "r3", "r4", "rep"]
    assert history[-1] == {"type": "report", "request_id": "rep", "loss": 0.25,
                           "nested": {"x": [1, 2]}}
    assert [h["request_id"] for h in store.history(RUN, count=2)] == ["r4", "rep"]


def test_history_capped(make_store: StoreFactory) -> None:
    store = created(make_store(history_maxlen=5))
    for v in range(12):
        commit(store, f"r{v}", v)
    assert [h["state_version"] for h in store.history(RUN, count=100)] == list(range(8, 13))
    assert [h["state_version"] for h in store.history(RUN, count=3)] == [10, 11, 12]


# -- delete and unknown runs -----------------------------------------------------------------------


def test_delete_removes_everything(store: PhaseStore) -> None:
    created(store)
    store.put_config("keep", RunConfig())
    commit(store, "r1", 0)
    commit(store, "r2", 1, update(7, ("c",)))
    store.record_report(RUN, "rep", report("rep"), {"type": "report"})
    assert store.delete_run(RUN) is True
    assert store.delete_run(RUN) is False
    assert store.get_config(RUN) is None and store.load(RUN) is None
    assert store.get_request(RUN, "r1") is None and store.get_request(RUN, "rep") is None
    with pytest.raises(NotFound):
        store.history(RUN)
    if isinstance(store, RedisStore):
        assert list(store.client.scan_iter(match=f"pcm:{{{RUN}}}:*")) == []
        assert store.client.keys("*{run-1}*") == []
    assert store.get_config("keep") == RunConfig()  # other runs untouched
    # the id can be used again, from scratch
    created(store)
    snap = store.load(RUN)
    assert snap is not None and (snap.state_version, snap.tasks) == (0, {})
    assert commit(store, "r1", 0).status is CommitStatus.COMMITTED


def test_unknown_run(store: PhaseStore) -> None:
    assert store.load("ghost") is None
    assert store.get_config("ghost") is None
    assert store.get_request("ghost", "r1") is None
    assert store.delete_run("ghost") is False
    with pytest.raises(NotFound, match="ghost"):
        store.commit_select("ghost", "r1", 0, CONFIG, update(0), answer(1), {})
    with pytest.raises(NotFound, match="ghost"):
        store.record_report("ghost", "rep", report(), {})
    with pytest.raises(NotFound, match="ghost"):
        store.history("ghost")
    if isinstance(store, RedisStore):  # a failed write leaves nothing behind
        assert store.client.keys("*{ghost}*") == []


def test_commit_after_delete_is_not_found(store: PhaseStore) -> None:
    created(store)
    snap = store.load(RUN)
    assert snap is not None
    store.delete_run(RUN)
    with pytest.raises(NotFound):
        commit(store, "r1", snap.state_version)


def test_ping(store: PhaseStore) -> None:
    store.ping()



# -- digests, revisions, reconciles, selections -------------------------------------------------


def test_same_request_id_with_another_digest_is_a_conflict(store: PhaseStore) -> None:
    created(store)
    first = commit(store, "r1", 0, digest="d1")
    assert first.status is CommitStatus.COMMITTED
    again = commit(store, "r1", 1, update(1), digest="d1")
    assert again.status is CommitStatus.REPLAY
    with pytest.raises(Conflict) as exc:
        commit(store, "r1", 1, update(1), digest="d2")
    assert exc.value.field == "request_id"
    with pytest.raises(Conflict):
        store.get_request(RUN, "r1", "d2")
    assert store.get_request(RUN, "r1", "d1") is not None
    assert store.record_report(RUN, "rep", report("rep"), {}, digest="x") is True
    assert store.record_report(RUN, "rep", report("rep"), {}, digest="x") is False
    with pytest.raises(Conflict):
        store.record_report(RUN, "rep", report("rep"), {}, digest="y")
    snap = store.load(RUN)
    assert snap is not None and (snap.state_version, snap.outcome_reports) == (1, 1)


def test_reconcile_replaces_the_answer_and_corrects_kept_counts_not_the_version(
        store: PhaseStore) -> None:
    created(store)
    committed = commit(store, "r1", 0, seed=3).answer
    commit(store, "r2", 1, update(5))  # another commit between: the correction still adds up
    before = store.load(RUN)
    assert before is not None
    new_answer = answer(1, seed=9)
    delta = {"a": np.array([1, -2, 0, 3])}
    result = store.reconcile_select(RUN, "r1", committed, delta, new_answer,
                                    {"type": "reconcile"}, aliases=("local-r1",))
    assert result.status is CommitStatus.COMMITTED
    after = store.load(RUN)
    assert after is not None
    assert (after.state_version, after.revision) == (2, before.revision + 1)
    np.testing.assert_array_equal(after.tasks["a"].chunks_kept,
                                  before.tasks["a"].chunks_kept + delta["a"])
    assert after.tasks["b"].equals(before.tasks["b"])
    assert replace(after.tasks["a"], chunks_kept=before.tasks["a"].chunks_kept).equals(
        before.tasks["a"])  # nothing else changed
    stored = store.get_request(RUN, "r1")
    assert stored is not None and stored[1].same_as(new_answer)
    # the alias names the selection in outcome reports
    ok = OutcomeReport.model_validate({"selection_id": "local-r1", "request_id": "rep",
                                       "success_rate": 0.5})
    assert store.record_report(RUN, "rep", ok, {}, require_selection=True) is True
    # a correction computed against the replaced answer is refused
    assert store.reconcile_select(RUN, "r1", committed, delta, new_answer,
                                  {}).status is CommitStatus.CONFLICT
    assert store.reconcile_select(RUN, "nope", committed, delta, new_answer,
                                  {}).status is CommitStatus.GONE
    final = store.load(RUN)
    assert final is not None and final.tasks["a"].equals(after.tasks["a"])


def test_reports_must_name_a_selection_of_the_run(store: PhaseStore) -> None:
    created(store)
    commit(store, "r1", 0, seed=5)  # answers selection "sel-5"
    unknown = OutcomeReport.model_validate({"selection_id": "sel-x", "request_id": "rep",
                                            "success_rate": 0.5})
    with pytest.raises(NotFound) as exc:
        store.record_report(RUN, "rep", unknown, {}, require_selection=True)
    assert exc.value.field == "selection_id"
    known = OutcomeReport.model_validate({"selection_id": "sel-5", "request_id": "rep",
                                          "success_rate": 0.5})
    assert store.record_report(RUN, "rep", known, {}, require_selection=True) is True
    snap = store.load(RUN)
    assert snap is not None and snap.outcome_reports == 1


def test_epoch_names_the_store(store: PhaseStore) -> None:
    created(store)
    assert store.epoch and store.epoch == store.epoch
    assert store.epoch.startswith("redis-" if isinstance(store, RedisStore) else "memory-")
