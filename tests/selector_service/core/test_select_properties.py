"""Property tests of the selection over random valid batches (docs/design.md, "Selection,
step by step")."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcm_contract.errors import InvalidArgument
from pcm_contract.run_config import MIN_EPS
from selector_service.core import (
    ChunkBatch,
    RunConfig,
    budgets,
    inclusion_probabilities,
    select_chunks,
    systematic_sample,
)


@st.composite
def batches(draw: st.DrawFn) -> tuple[RunConfig, ChunkBatch, dict]:
    config = RunConfig(
        phases=draw(st.integers(1, 6)),
        keep_fraction=draw(st.floats(0.01, 1.0)),
        eps=draw(st.one_of(st.just(0.0), st.floats(MIN_EPS, 1.0))),
        eta=draw(st.floats(0.01, 1.0)),
        weighting=draw(st.sampled_from(["mean", "ht", "none"])),
        score=draw(st.sampled_from(["action", "signal"])),
        budget=draw(st.sampled_from([0, 0, 1, 3, 50])),
        seed=draw(st.integers(0, 2**32)),
        feature_dim=draw(st.integers(1, 5)),
        mode=draw(st.sampled_from(["pcm", "random", "grpo"])),
    )
    num_groups = draw(st.integers(1, 4))
    task_ids, group_ids, success, phases, features = [], [], [], [], []
    seed = draw(st.integers(0, 2**32))
    rng = np.random.default_rng(seed)
    for g in range(num_groups):
        size = draw(st.integers(1, 5))
        outcome = draw(st.sampled_from(["mixed", "all_win", "all_fail", "random"]))
        for j in range(size):
            c = draw(st.integers(1, 12))
            task_ids.append(f"t{g % 2}")
            group_ids.append(f"g{g}")
            if outcome == "mixed":
                success.append(j % 2 == 0)
            elif outcome == "all_win":
                success.append(True)
            elif outcome == "all_fail":
                success.append(False)
            else:
                success.append(bool(rng.random() < 0.5))
            phases.append(rng.integers(0, config.phases, size=c))
            # Features at wildly different scales exercise capping of inclusion probabilities.
            features.append(rng.normal(size=(c, config.feature_dim))
                            * draw(st.sampled_from([1e-6, 1.0, 1e3])))
    batch = ChunkBatch.from_trajectories(task_ids, group_ids, np.array(success), phases,
                                         features, config.phases, config.feature_dim)
    return config, batch, {"request_id": f"r{seed}"}


def _informative(batch: ChunkBatch) -> np.ndarray:
    out = np.zeros(batch.num_trajectories, dtype=bool)
    for g in np.unique(batch.group_index):
        members = batch.group_index == g
        out[members] = len(set(batch.success[members].tolist())) == 2
    return out


@settings(max_examples=300, deadline=None)
@given(batches())
def test_selection_invariants(case: tuple[RunConfig, ChunkBatch, dict]) -> None:
    config, batch, extra = case
    sel = select_chunks(config, batch, {}, extra["request_id"])
    f = 1.0 if config.mode == "grpo" else config.keep_fraction
    fixed_budget = config.mode != "grpo" and config.budget > 0
    informative = _informative(batch)
    np.testing.assert_array_equal(sel.informative, informative)

    masks, weights, pis = batch.split(sel.mask), batch.split(sel.weight), batch.split(sel.inclusion)
    assert len(masks) == batch.num_trajectories
    for i, (mask, weight, pi) in enumerate(zip(masks, weights, pis, strict=True)):
        c = int(batch.lengths[i])
        assert mask.shape == (c,) and weight.shape == (c,)
        if not informative[i]:
            # All-equal groups: advantage 0, nothing kept, nothing computed.
            assert not mask.any() and not weight.any()
            continue
        k = min(config.budget, c) if fixed_budget else min(max(round(f * c), 1), c)
        assert mask.sum() == k, (mask.sum(), k)
        assert np.isclose(pi.sum(), k, rtol=0, atol=1e-9)
        assert ((pi > 0) & (pi <= 1)).all() or config.eps == 0
        assert (weight[~mask] == 0).all()
        expected = 1.0 / pi[mask] if config.weighting == "ht" else np.ones(int(mask.sum()))
        np.testing.assert_allclose(weight[mask], expected, rtol=1e-12)
    assert sel.kept_chunks == int(sel.mask.sum())
    assert sel.total_chunks == batch.num_chunks
    assert sel.skipped_trajectories == int((~informative).sum())
    for w in sel.keep_probs.values():
        assert np.isclose(w.sum(), 1.0) and (w >= 0).all()


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 20), min_size=1, max_size=6),
    f=st.floats(0.01, 1.0),
    data=st.data(),
)
def test_inclusion_probabilities_sum_to_budget(lengths: list[int], f: float,
                                               data: st.DataObject) -> None:
    lens = np.array(lengths)
    traj = np.repeat(np.arange(len(lengths)), lens)
    q = np.array(data.draw(st.lists(st.floats(0.0, 1e6), min_size=int(lens.sum()),
                                    max_size=int(lens.sum()))))
    k = budgets(lens, f)
    pi = inclusion_probabilities(q, traj, k)
    assert ((pi >= 0) & (pi <= 1)).all()
    np.testing.assert_allclose(np.bincount(traj, weights=pi), k, atol=1e-9)
    mask = systematic_sample(pi, traj, k, np.random.default_rng(data.draw(st.integers(0, 99))))
    np.testing.assert_array_equal(np.bincount(traj, weights=mask, minlength=len(lengths)), k)
    assert not mask[pi == 0].any()
    assert mask[pi >= 1].all()


def test_budget_rounding_and_clamp() -> None:
    lens = np.array([1, 2, 5, 10, 64, 3])
    np.testing.assert_array_equal(budgets(lens, 0.2), [1, 1, 1, 2, 13, 1])
    np.testing.assert_array_equal(budgets(lens, 1.0), lens)
    np.testing.assert_array_equal(budgets(np.array([7]), 0.5), [4])  # round(3.5) = 4


@pytest.mark.parametrize("eps", [5e-324, 1e-12, -0.1, 1.5])
def test_an_eps_that_would_underflow_or_leave_0_1_is_refused_naming_eps(eps: float) -> None:
    # a positive floor below MIN_EPS underflows in eps / P: some phase would get weight 0
    with pytest.raises(InvalidArgument) as exc:
        RunConfig(eps=eps)
    assert exc.value.field == "eps"
