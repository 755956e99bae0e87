"""RedisStore specifics against a real redis-server: key layout, serialisation of the stored
answer, TTLs and trimming, delete races, persistence, and failing fast while Redis is down."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis
from pydantic import ValidationError

from pcm_bench.servers import RedisServer
from pcm_contract.errors import StoreUnavailable
from pcm_contract.models import OutcomeReport, SelectResponse
from selector_service.core import RunConfig
from selector_service.service import SelectorService
from selector_service.store import CommitStatus, FlatAnswer
from selector_service.store.redis_store import RedisStore, RunKeys, decode_answer, encode_answer
from tests.selector_service.store.updates import counting_update
from tests.selector_service.test_service_concurrency import make_request

RUN = "run-r"
DOWN_BOUND_S = 1.0  # liveness, not a benchmark: a down Redis must not make a call hang


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    with RedisStore(redis_url) as s:
        yield s


def response(lengths: list[int], seed: int = 0, dense: bool = False,
             version: int = 2**40 + 3) -> SelectResponse:
    rng = np.random.default_rng(seed)
    masks, weights = [], []
    for n in lengths:
        mask = rng.random(n) < 0.3
        weight = np.where(mask, 1.0 / rng.random(n), 0.0)
        if dense and n:
            weight[~mask] = -0.0  # not +0.0: forces the dense layout
        for a in (mask, weight):
            a.flags.writeable = False
        masks.append(mask)
        weights.append(weight)
    return SelectResponse(selection_id="sel-1", state_version=version, masks=masks,
                          weights=weights, kept_chunks=int(sum(m.sum() for m in masks)),
                          total_chunks=sum(lengths), skipped_trajectories=2,
                          keep_probs={"a": [0.1, 1 / 3, 2 / 3 - 0.1], "b:x/y": [5e-324, 1.0]})


def bits(arrays: list[np.ndarray]) -> list[bytes]:
    return [a.tobytes() for a in arrays]


def assert_identical(got: SelectResponse, want: SelectResponse) -> None:
    assert got.same_as(want)
    assert bits(got.weights) == bits(want.weights)  # bit-identical float64 (-0.0 included)
    assert got.keep_probs == want.keep_probs
    for mask, weight in zip(got.masks, got.weights, strict=True):
        assert mask.dtype == np.bool_ and weight.dtype == np.float64
        assert not mask.flags.writeable and not weight.flags.writeable


# -- serialisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [[5, 3, 7], [1], [0, 4, 0], [], [9] * 40])
@pytest.mark.parametrize("dense", [False, True])
def test_answer_round_trip_is_exact(lengths: list[int], dense: bool) -> None:
    want = response(lengths, seed=len(lengths), dense=dense)
    got = decode_answer(encode_answer(want))
    assert_identical(got, want)
    with pytest.raises(ValidationError, match="frozen"):
        got.state_version = 0
    with pytest.raises(ValueError, match="read-only"):
        if got.weights:
            got.weights[0][...] = 1.0
        else:
            raise ValueError("read-only")


@pytest.mark.parametrize("lengths", [[5, 3, 7], [0, 4, 0], [], [9] * 40])
@pytest.mark.parametrize("dense", [False, True])
def test_a_record_packed_from_the_flat_arrays_is_the_same(lengths: list[int],
                                                          dense: bool) -> None:
    want = response(lengths, seed=3, dense=dense)
    flat = FlatAnswer(np.asarray(lengths, dtype=np.int64),
                      np.concatenate([np.zeros(0, bool), *want.masks]),
                      np.concatenate([np.zeros(0), *want.weights]))
    assert encode_answer(want, "d" * 32, flat) == encode_answer(want, "d" * 32)
    with pytest.raises(ValueError, match="trajectories"):
        encode_answer(want, "", FlatAnswer(np.asarray([*lengths, 0]), flat.mask, flat.weight))


def test_extreme_weights_round_trip() -> None:
    weights = np.array([5e-324, 1.7976931348623157e308, np.nextafter(1.0, 2.0), 1.0, 0.0])
    mask = weights != 0
    for a in (mask, weights):
        a.flags.writeable = False
    want = SelectResponse(selection_id="s", state_version=1, masks=[mask], weights=[weights],
                          kept_chunks=4, total_chunks=5, skipped_trajectories=0, keep_probs={})
    assert_identical(decode_answer(encode_answer(want)), want)


def test_the_budget_fields_round_trip() -> None:
    base = response([5, 3], seed=2)
    for efficiency, rate in ((None, None), (0.6180339887498949, None), (0.75, 1.2345678901)):
        want = base.model_copy(update={"keep_fraction": 0.4375,
                                       "predicted_efficiency": efficiency,
                                       "predicted_rate": rate})
        got = decode_answer(encode_answer(want))
        assert_identical(got, want)
        assert (got.keep_fraction, got.predicted_efficiency, got.predicted_rate) == (
            0.4375, efficiency, rate)


def test_full_libero_step_is_cheap_and_small(store: RedisStore) -> None:
    """512 trajectories x 64 chunks: pack, unpack, and a commit + replay through Redis."""
    want = response([64] * 512, seed=1)
    record = encode_answer(want)
    assert len(record) < 100_000  # sparse weights: ~20% kept
    encode_s = _best_of(lambda: encode_answer(want))
    decode_s = _best_of(lambda: decode_answer(record))
    print(f"\n512x64 answer: {len(record)} bytes, encode {encode_s * 1e3:.2f} ms, "
          f"decode {decode_s * 1e3:.2f} ms")
    assert encode_s < 0.05 and decode_s < 0.05  # loose: ~1 ms each on one core

    want = want.model_copy(update={"state_version": 2})  # as the commit will set it
    store.put_config(RUN, RunConfig())
    store.commit_select(RUN, "warm-up", 0, RunConfig(), counting_update([]),
                        response([1], version=1), {})  # loads the script
    t0 = time.perf_counter()
    result = store.commit_select(RUN, "big", 1, RunConfig(), counting_update([]), want, {})
    t1 = time.perf_counter()
    stored = store.get_request(RUN, "big")
    t2 = time.perf_counter()
    print(f"commit {(t1 - t0) * 1e3:.2f} ms, get_request {(t2 - t1) * 1e3:.2f} ms")
    assert result.status is CommitStatus.COMMITTED
    assert stored is not None and stored[0] == "select"
    assert_identical(stored[1], want)


def _best_of(fn: Callable[[], Any], repeat: int = 20) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# -- keys ------------------------------------------------------------------------------------------


def _commit(store: RedisStore, request_id: str, read: int, tasks: list[str],
            history: dict[str, Any] | None = None) -> Any:
    return store.commit_select(RUN, request_id, read, RunConfig(), counting_update(tasks),
                               response([3], 0, version=read + 1), history or {})


def test_key_layout(redis_url: str) -> None:
    with RedisStore(redis_url, request_ttl_s=600) as store:
        store.put_config(RUN, RunConfig())
        _commit(store, "r1", 0, ["pick", "a:b"], {"type": "select"})
        store.record_report(RUN, "rep", _report("rep"), {"type": "report"})
        client = store.client
        keys = RunKeys(RUN)
        stored: list[bytes] = client.keys("*")  # type: ignore[assignment]
        assert {k.decode() for k in stored} == {
            keys.config, keys.tasks, keys.reqs, keys.history, keys.sels, keys.state("pick"),
            keys.state("a:b"), keys.req("r1"), keys.req("rep")}
        assert keys.config == "pcm:{run-r}:config" and keys.req("r1") == "pcm:{run-r}:req:r1"
        assert client.type(keys.config) == b"hash" and client.type(keys.history) == b"stream"
        assert client.type(keys.tasks) == b"set" and client.type(keys.reqs) == b"zset"
        assert client.type(keys.sels) == b"zset"
        assert client.zrange(keys.sels, 0, -1) == [b"sel-1"]  # the answer's selection_id
        assert client.hget(keys.config, "state_version") == b"1"
        assert client.hget(keys.config, "revision") == b"1"
        assert client.hget(keys.config, "outcome_reports") == b"1"
        assert client.smembers(keys.tasks) == {b"pick", b"a:b"}
        for req in ("r1", "rep"):
            assert 590 <= client.ttl(keys.req(req)) <= 600
        assert client.get(keys.req("rep")) == b"R"
        # all of a run's keys hash to one cluster slot
        slots = {redis.crc.key_slot(k) for k in stored}
        assert len(slots) == 1


def _report(request_id: str) -> OutcomeReport:
    return OutcomeReport.model_validate({"selection_id": "s", "request_id": request_id,
                                         "success_rate": 1.0})


def test_history_trimmed_approximately_but_shown_exactly(redis_url: str) -> None:
    with RedisStore(redis_url, history_maxlen=5) as store:
        store.put_config(RUN, RunConfig())
        for v in range(300):
            store.record_report(RUN, f"rep{v}", _report(f"rep{v}"), {"v": v})
        assert store.client.xlen(RunKeys(RUN).history) <= 5 + 100  # MAXLEN ~: whole nodes
        assert store.history(RUN, count=100) == [{"v": v} for v in range(295, 300)]
        assert store.history(RUN, count=0) == []


def test_expired_request_records_are_pruned_from_the_index(redis_url: str) -> None:
    with RedisStore(redis_url, request_ttl_s=1) as store:
        store.put_config(RUN, RunConfig())
        store.record_report(RUN, "old", _report("old"), {})
        keys = RunKeys(RUN)
        store.client.zadd(keys.reqs, {"old": 1})  # as if it expired long ago
        store.record_report(RUN, "new", _report("new"), {})
        assert store.client.zrange(keys.reqs, 0, -1) == [b"new"]


# -- delete ----------------------------------------------------------------------------------------


def test_delete_many_keys(store: RedisStore) -> None:
    store.put_config(RUN, RunConfig())
    _commit(store, "r0", 0, [f"task-{i}" for i in range(300)])
    with store.client.pipeline(transaction=False) as pipe:  # 2,500 records, quickly
        for i in range(2500):
            pipe.set(RunKeys(RUN).req(f"x{i}"), b"R")
            pipe.zadd(RunKeys(RUN).reqs, {f"x{i}": time.time() * 1000 + 60_000})
        pipe.execute()
    assert len(store.client.keys("*")) > 2800
    assert store.delete_run(RUN) is True
    assert store.client.keys("*") == []


def test_delete_retries_when_a_commit_slips_in(redis_url: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with RedisStore(redis_url) as store, RedisStore(redis_url) as other:
        store.put_config(RUN, RunConfig())
        _commit(store, "r1", 0, ["a"])
        script = store._delete_run
        calls: list[int] = []

        def racing(*args: Any, **kwargs: Any) -> Any:
            if not calls:  # another selector commits between listing and deleting
                result = _commit(other, "r2", 1, ["new-task"])
                assert result.status is CommitStatus.COMMITTED
            calls.append(1)
            return script(*args, **kwargs)

        monkeypatch.setattr(store, "_delete_run", racing)
        assert store.delete_run(RUN) is True
        assert len(calls) == 2  # the first attempt saw an unlisted task and deleted nothing
        assert store.client.keys("*") == []


# -- through the service: persistence and outages --------------------------------------------------


def _service(server: RedisServer, errors: list[str] | None = None) -> SelectorService:
    on_error = errors.append if errors is not None else None
    return SelectorService(RedisStore(server.url_for(0), on_error=on_error))


def test_state_survives_a_restart(isolated_redis_server: RedisServer) -> None:
    service = _service(isolated_redis_server)
    service.put_run(RUN, phases=4, feature_dim=8)
    requests = [make_request(f"r{i}", seed=i)[0] for i in range(5)]
    answers = [service.select(RUN, r) for r in requests]
    service.report_outcomes(RUN, {"selection_id": answers[0].selection_id,
                                  "request_id": "rep-1", "success_rate": 0.5})
    info = service.get_run(RUN)
    before = info.model_dump(exclude={"store_epoch"})
    history = service.history(RUN)

    isolated_redis_server.stop()
    isolated_redis_server.start()  # same port, same dir: state comes back from the AOF

    again = service.get_run(RUN)  # the same store object reconnects
    assert again.model_dump(exclude={"store_epoch"}) == before
    assert again.store_epoch != info.store_epoch  # a new Redis incarnation: clients can tell
    assert service.history(RUN) == history
    fresh = _service(isolated_redis_server)
    assert fresh.get_run(RUN).model_dump(exclude={"store_epoch"}) == before
    assert fresh.select(RUN, requests[2]).same_as(answers[2])  # replay survives too
    assert fresh.select(RUN, make_request("r9", seed=9)[0]).state_version == 6


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    with pytest.raises(StoreUnavailable) as exc:
        fn()
    elapsed = time.perf_counter() - t
    assert "redis" in str(exc.value)
    return elapsed


def test_redis_down_fails_fast_then_recovers(isolated_redis_server: RedisServer) -> None:
    errors: list[str] = []
    service = _service(isolated_redis_server, errors)
    service.put_run(RUN, phases=4, feature_dim=8)
    service.select(RUN, make_request("r0", seed=0)[0])

    isolated_redis_server.stop()
    assert _timed(lambda: service.select(RUN, make_request("r1", seed=1)[0])) < DOWN_BOUND_S
    assert _timed(lambda: service.get_run(RUN)) < DOWN_BOUND_S
    assert _timed(service.store.ping) < DOWN_BOUND_S
    assert _timed(lambda: service.put_run(RUN, eta=0.5)) < DOWN_BOUND_S
    assert not service.ready()
    # a select's first store call reads the state (its copy does not cover the new tasks)
    assert errors[:4] == ["load", "load", "ping", "get_config"]

    isolated_redis_server.start()
    assert service.ready()
    assert service.select(RUN, make_request("r1", seed=1)[0]).state_version == 2
    assert service.get_run(RUN).state_version == 2


def test_frozen_redis_times_out(isolated_redis_server: RedisServer) -> None:
    errors: list[str] = []
    service = _service(isolated_redis_server, errors)
    service.put_run(RUN, phases=4, feature_dim=8)
    isolated_redis_server.pause()  # accepts connections, answers nothing
    try:
        assert _timed(lambda: service.get_run(RUN)) < 2 * DOWN_BOUND_S
        assert _timed(service.store.ping) < 2 * DOWN_BOUND_S
    finally:
        isolated_redis_server.resume()
    assert errors == ["load", "ping"]
    assert service.get_run(RUN).state_version == 0


def test_on_error_failure_does_not_mask_the_store_error(
        isolated_redis_server: RedisServer) -> None:
    def broken(op: str) -> None:
        raise RuntimeError("metrics down")

    store = RedisStore(isolated_redis_server.url_for(0), on_error=broken)
    isolated_redis_server.stop()
    with pytest.raises(StoreUnavailable, match="ping"):
        store.ping()


def _count_round_trips(store: RedisStore) -> list[str]:
    """Record each round trip the store makes from now on: a command, or a pipeline (MULTI)."""
    calls: list[str] = []
    client: Any = store.client
    command, pipeline = client.execute_command, client.pipeline

    def counted_command(*args: Any, **options: Any) -> Any:
        calls.append(str(args[0]))
        return command(*args, **options)

    def counted_pipeline(*args: Any, **kwargs: Any) -> Any:
        calls.append("PIPELINE")
        return pipeline(*args, **kwargs)

    client.execute_command = counted_command
    client.pipeline = counted_pipeline
    return calls


def test_a_select_is_one_round_trip_while_the_state_copy_holds(redis_url: str) -> None:
    """Selects in sequence on one selector: one EVALSHA each (COMMIT_SELECT), no reads."""
    store = RedisStore(redis_url)
    service = SelectorService(store)
    service.put_run(RUN, phases=4, feature_dim=8)
    request = make_request("warm", seed=0)[0]
    service.select(RUN, request)
    calls = _count_round_trips(store)
    for i in range(5):
        answer = service.select(RUN, {**request, "request_id": f"r{i}"})
        assert answer.state_version == i + 2
    assert calls == ["EVALSHA"] * 5
    assert service.select(RUN, {**request, "request_id": "r0"}).state_version == 2  # replay
    assert calls == ["EVALSHA"] * 6
    assert service.get_run(RUN).state_version == 6


def test_a_stale_state_copy_is_caught_by_the_commit(redis_url: str) -> None:
    """Two selectors over one Redis: each commits on the other's state (counts exact), and a
    config change made through the other one is used at once."""
    a, b = (SelectorService(RedisStore(redis_url)) for _ in range(2))
    a.put_run(RUN, phases=4, feature_dim=8)
    request, _ = make_request("x", seed=0)
    for i in range(4):
        service = (a, b)[i % 2]
        assert service.select(RUN, {**request, "request_id": f"r{i}"}).state_version == i + 1
    tasks = a.get_run(RUN).tasks
    assert sum(t.trajectories for t in tasks.values()) == 4 * len(request["trajectories"])
    assert a.select(RUN, {**request, "request_id": "r4"}).state_version == 5  # a's copy: v5
    b.put_run(RUN, keep_fraction=1.0)  # same state_version; a's copy holds keep_fraction 0.2
    answer = a.select(RUN, {**request, "request_id": "all"})
    assert answer.state_version == 6
    assert answer.kept_chunks > 0
    assert all(m.all() or not m.any() for m in answer.masks)  # f = 1: all or (skipped) none
