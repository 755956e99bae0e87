"""The Redis store's fold (Lua, store/lua.py) is core/fold.py's `fold_task`, bit for bit, on
random states and updates, against a real redis-server; and the binary task state round-trips
(also from the JSON that earlier versions stored)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis

from selector_service.core import TaskState
from selector_service.core.fold import TaskUpdate, fold_task
from selector_service.store import lua
from selector_service.store.state_codec import (
    decode_state,
    encode_fold_params,
    encode_state,
    encode_update,
)


@pytest.fixture
def fold_script(redis_url: str) -> Iterator[Any]:
    client = redis.Redis.from_url(redis_url)
    yield client.register_script(lua.FOLD_STATES)
    client.close()


def random_state(rng: np.random.Generator, p: int, d: int | None) -> TaskState:
    scores = rng.normal(size=p) * 10.0 ** rng.integers(-8, 8, size=p)
    scores[rng.random(p) < 0.3] = np.nan
    ref = None
    if d is not None:
        ref = rng.normal(size=(p, d))
        ref[rng.random(p) < 0.3] = np.nan
    return TaskState(scores=scores, observations=rng.integers(0, 5000, size=p),
                     chunks_total=rng.integers(0, 2**40, size=p),
                     chunks_kept=rng.integers(0, 2**30, size=p),
                     trajectories=int(rng.integers(0, 2**40)),
                     skipped_trajectories=int(rng.integers(0, 2**30)),
                     version=int(rng.integers(0, 2**40)), signal_ref=ref)


def random_update(rng: np.random.Generator, p: int, d: int | None) -> TaskUpdate:
    present = rng.random(p) < 0.7
    return TaskUpdate(
        evidence=rng.normal(size=p) * 10.0 ** rng.integers(-8, 8, size=p),
        observed=(rng.random(p) < 0.6) & present,
        chunks_total=rng.integers(0, 5000, size=p), chunks_kept=rng.integers(0, 1000, size=p),
        trajectories=int(rng.integers(0, 600)), skipped_trajectories=int(rng.integers(0, 600)),
        group_mean=None if d is None else rng.normal(size=(p, d)),
        present=None if d is None else present)


def lua_fold(script: Any, states: list[TaskState | None], updates: list[TaskUpdate],
             eta: float, bias_corrected: bool, window: int = 0) -> list[TaskState | None]:
    args: list[bytes] = [encode_fold_params(eta, bias_corrected, window)]
    for state, update in zip(states, updates, strict=True):
        args += [b"" if state is None else encode_state(state), encode_update(update)]
    return [decode_state(raw) if raw else None for raw in script(keys=[], args=args)]


def assert_same_bits(got: TaskState | None, want: TaskState) -> None:
    assert got is not None
    np.testing.assert_array_equal(got.scores, want.scores)  # NaN where NaN, else equal bits
    assert got.scores[~np.isnan(got.scores)].tobytes() == \
        want.scores[~np.isnan(want.scores)].tobytes()
    for name in ("observations", "chunks_total", "chunks_kept"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert (got.trajectories, got.skipped_trajectories, got.version) == (
        want.trajectories, want.skipped_trajectories, want.version)
    assert (got.signal_ref is None) == (want.signal_ref is None)
    if want.signal_ref is not None and got.signal_ref is not None:
        assert got.signal_ref.shape == want.signal_ref.shape
        np.testing.assert_array_equal(got.signal_ref, want.signal_ref)
    assert got.window_batches == want.window_batches
    for a, b in zip(got.window(), want.window(), strict=True):
        assert np.asarray(a, np.float64).tobytes() == np.asarray(b, np.float64).tobytes()


@pytest.mark.parametrize("bias_corrected", [True, False], ids=["signal", "action"])
def test_lua_fold_equals_the_python_fold_bit_for_bit(fold_script: Any,
                                                     bias_corrected: bool) -> None:
    rng = np.random.default_rng(7 if bias_corrected else 8)
    for _ in range(400):
        p = int(rng.integers(1, 9))
        d = int(rng.integers(1, 70)) if bias_corrected else None
        eta = float(rng.choice([0.1, 0.05, 0.3, rng.uniform(1e-4, 1.0)]))
        states: list[TaskState | None] = []
        updates = []
        for _ in range(int(rng.integers(1, 4))):
            kind = rng.random()
            if kind < 0.2:
                state: TaskState | None = None
            else:
                # a state without a reference yet, or one of another width, is reset by it
                width = d if kind < 0.8 or d is None else (None if kind < 0.9 else d + 1)
                state = random_state(rng, p, width)
            states.append(state)
            updates.append(random_update(rng, p, d))
        got = lua_fold(fold_script, states, updates, eta, bias_corrected)
        for state, update, folded in zip(states, updates, got, strict=True):
            want = fold_task(state, update, eta, bias_corrected, p)
            assert_same_bits(folded, want)


def test_lua_fold_of_many_batches_stays_equal(fold_script: Any) -> None:
    """A long run: 300 batches folded one after another, in Lua and in Python."""
    rng = np.random.default_rng(3)
    p, d, eta = 4, 56, 0.1
    python: TaskState | None = None
    in_lua: TaskState | None = None
    for _ in range(300):
        update = random_update(rng, p, d)
        python = fold_task(python, update, eta, True, p)
        (in_lua,) = lua_fold(fold_script, [in_lua], [update], eta, True)
        assert python is not None
        assert_same_bits(in_lua, python)
    assert python is not None and python.version == 300


@pytest.mark.parametrize("window", [1, 2, 5])
def test_lua_fold_with_a_score_window_equals_the_python_fold(fold_script: Any,
                                                             window: int) -> None:
    """The paper's refresh window (score_window T): 200 batches folded one after another in
    Lua and in Python, each state also round-tripped through the binary form; the scores are
    held between refreshes and every T-th batch (or while none is scored) refreshed."""
    rng = np.random.default_rng(10 + window)
    p = 5
    python: TaskState | None = None
    in_lua: TaskState | None = None
    refreshes = 0
    for step in range(200):
        update = random_update(rng, p, None)
        if step < 3:  # nothing observed yet: every batch refreshes until a phase is scored
            update = TaskUpdate(**{**update.__dict__, "observed": np.zeros(p, dtype=bool)})
        before = None if python is None else python.scores.copy()
        python = fold_task(python, update, 0.1, False, p, window)
        (in_lua,) = lua_fold(fold_script, [in_lua], [update], 0.1, False, window)
        assert_same_bits(in_lua, python)
        assert_same_bits(decode_state(encode_state(python)), python)
        if python.window_batches == 0:
            refreshes += 1
        elif before is not None:
            np.testing.assert_array_equal(python.scores, before)  # held
    assert refreshes >= 200 // window


def test_lua_fold_refuses_a_state_of_other_phases(fold_script: Any) -> None:
    rng = np.random.default_rng(1)
    (out,) = lua_fold(fold_script, [random_state(rng, 3, None)],
                      [random_update(rng, 4, None)], 0.1, False)
    assert out is None


def test_wide_reference_folds_in_lua(fold_script: Any) -> None:
    """The widest reference a run may have (64 phases x 4096) passes through Lua's stack in
    pieces."""
    rng = np.random.default_rng(2)
    state = random_state(rng, 64, 4096)
    update = random_update(rng, 64, 4096)
    (got,) = lua_fold(fold_script, [state], [update], 0.1, True)
    assert_same_bits(got, fold_task(state, update, 0.1, True, 64))


def test_binary_state_round_trips_and_json_states_still_decode(fold_script: Any) -> None:
    rng = np.random.default_rng(4)
    for d in (None, 5):
        state = random_state(rng, 6, d)
        assert_same_bits(decode_state(encode_state(state)), state)
        legacy = json.dumps(state.to_dict()).encode()  # as earlier versions stored it
        assert_same_bits(decode_state(legacy), TaskState.from_dict(json.loads(legacy)))
        # Lua reads the JSON form exactly too: its fold equals Python's on the decoded state
        update = random_update(rng, 6, d)
        args = [encode_fold_params(0.1, d is not None), legacy, encode_update(update)]
        (raw,) = fold_script(keys=[], args=args)
        assert_same_bits(decode_state(raw), fold_task(TaskState.from_dict(json.loads(legacy)),
                                                      update, 0.1, d is not None, 6))
