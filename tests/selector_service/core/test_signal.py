"""The `signal` phase score (core/signal.py): the formulas by hand, the planted-direction case,
the fixed budget B and the loss weightings."""

from __future__ import annotations

import numpy as np
import pytest

from selector_service.core import RunConfig, TaskState, select_chunks
from selector_service.core.signal import group_phase_sums, signal_scores
from tests.selector_service.core.batches import contiguous_phases, make_batch


def test_group_phase_sums_and_scores_match_the_formulas() -> None:
    rng = np.random.default_rng(0)
    m, d, groups, phases = 300, 5, 4, 3
    group = rng.integers(0, groups, m)
    phase = rng.integers(0, phases, m)
    x = rng.normal(size=(m, d)).astype(np.float32)
    include = rng.random(m) < 0.8
    include[group == 3] = False  # group 3 is not informative
    task_of_chunk = np.zeros(m, dtype=np.int64)
    sums, counts = group_phase_sums(task_of_chunk, group, phase, x, include, groups, phases)
    for g in range(groups):
        for p in range(phases):
            sel = include & (group == g) & (phase == p)
            np.testing.assert_allclose(sums[g, p], x[sel].astype(np.float64).sum(0), atol=1e-9)
            assert counts[g, p] == sel.sum()

    # first batch: cross-group estimate only; G = 3 included groups
    ref = np.full((1, phases, d), np.nan)
    v, observed, new_ref = signal_scores(np.zeros(groups, dtype=np.int64), sums, counts, ref,
                                         num_tasks=1, eta=0.25)
    s = sums[:3]
    for p in range(phases):
        cross = np.mean([s[a, p] @ s[b, p] for a in range(3) for b in range(3) if a != b])
        assert v[0, p] == pytest.approx(cross, abs=1e-9)
        np.testing.assert_allclose(new_ref[0, p], s[:, p].mean(0))
    assert observed.all()

    # second batch: the mean of the cross-group and the cross-step (<R, mean_g S_g>) estimates
    v2, _, ref2 = signal_scores(np.zeros(groups, dtype=np.int64), sums, counts, new_ref,
                                num_tasks=1, eta=0.25)
    for p in range(phases):
        cross = np.mean([s[a, p] @ s[b, p] for a in range(3) for b in range(3) if a != b])
        step = new_ref[0, p] @ s[:, p].mean(0)
        assert v2[0, p] == pytest.approx((cross + step) / 2, abs=1e-9)
        np.testing.assert_allclose(ref2[0, p], 0.75 * new_ref[0, p] + 0.25 * s[:, p].mean(0))


def planted_batch(rng: np.random.Generator, direction: np.ndarray, groups: int = 4,
                  group_size: int = 8, chunks: int = 16) -> tuple[list, ...]:
    """Sketches x_ic as a trainer sends them: in phase 0 a common direction (the expected
    gradient) plus unit noise; in phase 1 directionless noise 6x larger; phases 2-3 small
    noise. Outcomes alternate so that every group is informative."""
    d = direction.shape[0]
    n = groups * group_size
    success = [i % 2 == 0 for i in range(n)]
    phases = [contiguous_phases(chunks, 4) for _ in range(n)]
    features = []
    for i in range(n):
        x = rng.normal(0.0, 0.3, size=(chunks, d))
        in0, in1 = phases[i] == 0, phases[i] == 1
        x[in0] = direction + rng.normal(0.0, 1.0, size=(int(in0.sum()), d))
        x[in1] = rng.normal(0.0, 6.0, size=(int(in1.sum()), d))
        features.append(x)
    return [chunks] * n, success, [f"g{i // group_size}" for i in range(n)], phases, features


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_signal_finds_the_planted_direction_not_the_loud_noise(seed: int) -> None:
    """Within 20 batches the signal score puts the largest keep weight (>= 0.5) on the phase
    whose sketches share a direction, not on the phase with larger but directionless noise;
    the paper's action score, fed the same features, prefers the loud phase."""
    rng = np.random.default_rng(seed)
    d = 32
    direction = rng.normal(size=d)
    direction *= 1.0 / np.linalg.norm(direction)
    signal = RunConfig(phases=4, feature_dim=d, score="signal")
    action = RunConfig(phases=4, feature_dim=d, score="action")
    states_signal: dict[str, TaskState] = {}
    states_action: dict[str, TaskState] = {}
    for step in range(20):
        batch = make_batch(*planted_batch(rng, direction), signal)
        sel = select_chunks(signal, batch, states_signal, f"s{step}")
        states_signal = sel.new_states
        states_action = select_chunks(action, batch, states_action, f"s{step}").new_states
    w = sel.keep_probs["task"]
    assert int(np.argmax(w)) == 0 and w[0] >= 0.5, w
    assert w[1] < w[0], w
    w_action = select_chunks(action, batch, states_action, "last").keep_probs["task"]
    assert w_action[1] > w_action[0], w_action
    # the reference sums are part of the state, per phase
    ref = states_signal["task"].signal_ref
    assert ref is not None and ref.shape == (4, d)
    cos = ref[0] @ direction / np.linalg.norm(ref[0])
    assert cos > 0.9, cos


def test_signal_state_round_trips_through_json() -> None:
    rng = np.random.default_rng(1)
    config = RunConfig(phases=4, feature_dim=8, score="signal")
    batch = make_batch(*planted_batch(rng, np.ones(8) / np.sqrt(8), chunks=3), config)
    state = select_chunks(config, batch, {}, "r").new_states["task"]
    assert state.signal_ref is not None
    back = TaskState.from_dict(state.to_dict())
    assert back.equals(state)


def test_fixed_budget_keeps_b_chunks_per_trajectory() -> None:
    rng = np.random.default_rng(2)
    config = RunConfig(phases=4, feature_dim=8, budget=3)
    lengths = [2, 3, 10, 16]
    phases = [contiguous_phases(c, 4) for c in lengths]
    feats = [rng.normal(size=(c, 8)) for c in lengths]
    batch = make_batch(lengths, [True, False, True, False], ["a", "a", "b", "b"], phases, feats,
                       config)
    sel = select_chunks(config, batch, {}, "r")
    assert [int(m.sum()) for m in batch.split(sel.mask)] == [2, 3, 3, 3]
    # a request's keep_fraction overrides the run's budget
    sel = select_chunks(config, batch, {}, "r", keep_fraction=0.5)
    assert [int(m.sum()) for m in batch.split(sel.mask)] == [1, 2, 5, 8]


@pytest.mark.parametrize("weighting", ["mean", "ht", "none"])
def test_weightings(weighting: str) -> None:
    """`mean` and `none`: weight 1 on kept chunks (they differ in the trainer's denominator);
    `ht`: 1 / pi."""
    rng = np.random.default_rng(3)
    config = RunConfig(phases=4, feature_dim=8, weighting=weighting)
    batch = make_batch(*planted_batch(rng, np.ones(8) / np.sqrt(8), groups=2), config)
    sel = select_chunks(config, batch, {}, "r")
    kept = sel.mask
    assert (sel.weight[~kept] == 0).all()
    if weighting == "ht":
        np.testing.assert_allclose(sel.weight[kept], 1.0 / sel.inclusion[kept])
    else:
        assert (sel.weight[kept] == 1.0).all()
