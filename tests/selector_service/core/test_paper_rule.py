"""The paper's selection (arXiv 2605.16154, Sec. 4.3-4.5): phase scores averaged over a refresh
window and held in between (`score_window`), keep probabilities p = max(p_min, s / max s)
(`keep_rule` paper), each chunk weighted by its phase's p and drawn by weighted sampling without
replacement."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pcm_contract.errors import InvalidArgument
from selector_service.core import RunConfig, TaskState, select_chunks
from selector_service.core.fold import fold_scores
from selector_service.core.sampling import successive_sample
from selector_service.core.weights import paper_keep_probs
from tests.selector_service.core.batches import diverging_batch

PAPER = {"score": "action", "score_window": 5, "keep_rule": "paper", "weighting": "mean",
         "phases": 4, "feature_dim": 8}


def test_window_scores_come_from_the_first_batch_then_every_window() -> None:
    """T = 3: the first batch's evidence sets the scores; batches 2-3 are held; batch 4 (the
    window's third) sets each phase to its mean evidence over batches 2-4, 0 for a phase with
    none in the window, NaN for one never observed."""
    state = TaskState.empty(4)
    evidence = [np.array([1.0, 2.0, 0.0, 0.0]), np.array([3.0, 0.0, 0.0, 0.0]),
                np.array([5.0, 6.0, 0.0, 0.0]), np.array([7.0, 0.0, 0.0, 0.0])]
    observed = [np.array([True, True, False, False]), np.array([True, False, False, False]),
                np.array([True, True, False, False]), np.array([True, False, False, False])]
    seen = []
    for v, obs in zip(evidence, observed, strict=True):
        scores, wsum, wcount, batches = fold_scores(state, v, obs, 0.1, False, 3)
        state = TaskState(scores=scores, observations=state.observations + obs,
                          chunks_total=state.chunks_total, chunks_kept=state.chunks_kept,
                          window_sum=wsum, window_count=wcount, window_batches=batches)
        seen.append((scores.copy(), batches))
    np.testing.assert_array_equal(seen[0][0], [1.0, 2.0, np.nan, np.nan])
    assert seen[0][1] == 0  # refreshed from the first batch itself
    np.testing.assert_array_equal(seen[1][0], seen[0][0])  # held
    np.testing.assert_array_equal(seen[2][0], seen[0][0])
    assert (seen[1][1], seen[2][1]) == (1, 2)
    np.testing.assert_array_equal(seen[3][0], [(3.0 + 5.0 + 7.0) / 3, 6.0, np.nan, np.nan])
    assert seen[3][1] == 0


def test_window_refreshes_while_nothing_is_scored() -> None:
    """Batches that observe no phase leave the scores NaN, and the next batch that does sets
    them (the paper's 'first batch' is the first with mixed outcomes)."""
    state = TaskState.empty(2)
    none = np.zeros(2, dtype=bool)
    scores, _, _, batches = fold_scores(state, np.zeros(2), none, 0.1, False, 5)
    assert np.isnan(scores).all() and batches == 0
    scores, _, _, _ = fold_scores(state, np.array([0.5, 0.0]), np.array([True, False]), 0.1,
                                  False, 5)
    np.testing.assert_array_equal(scores, [0.5, np.nan])


def test_paper_keep_probabilities() -> None:
    p = paper_keep_probs(np.array([[4.0, 2.0, 0.1, np.nan], [np.nan] * 4, [-1.0, 0, 0, 0]]),
                         0.1)
    np.testing.assert_allclose(p[0], [1.0, 0.5, 0.1, 0.1])  # max-normalised, floored at 0.1
    np.testing.assert_array_equal(p[1], [1.0] * 4)  # no positive score: every phase alike
    np.testing.assert_array_equal(p[2], [1.0] * 4)


def plackett_luce_inclusion(q: np.ndarray, k: int) -> np.ndarray:
    """Exact inclusion probabilities of k draws without replacement, each in proportion to
    the weights left, by enumerating the ordered draws."""
    out = np.zeros(len(q))
    for seq in itertools.permutations(range(len(q)), k):
        prob, left = 1.0, q.sum()
        for i in seq:
            prob *= q[i] / left
            left -= q[i]
        out[list(seq)] += prob
    return out


def test_successive_sample_keeps_k_per_trajectory_with_plackett_luce_probabilities() -> None:
    rng = np.random.default_rng(0)
    q = np.array([1.0, 0.5, 0.1, 0.1, 2.0, 1.0, 1.0, 0.0])  # two trajectories of 4
    traj = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    k = np.array([2, 3])
    draws = 40_000
    counts = np.zeros(len(q))
    for _ in range(draws):
        mask = successive_sample(q, traj, k, rng)
        assert mask[:4].sum() == 2 and mask[4:].sum() == 3
        counts += mask
    want = np.r_[plackett_luce_inclusion(q[:4], 2), plackett_luce_inclusion(q[4:], 3)]
    np.testing.assert_allclose(counts / draws, want, atol=0.01)
    assert counts[7] == 0  # weight 0 is drawn only when nothing else is left


def test_config_refuses_the_paper_rule_with_auto_or_ht() -> None:
    with pytest.raises(InvalidArgument) as err:
        RunConfig(**{**PAPER, "budget_rule": "auto", "score": "signal"})
    assert err.value.field == "keep_rule"
    with pytest.raises(InvalidArgument) as err:
        RunConfig(**{**PAPER, "weighting": "ht"})
    assert err.value.field == "keep_rule"
    with pytest.raises(InvalidArgument) as err:
        RunConfig(**{**PAPER, "score_window": -1})
    assert err.value.field == "score_window"


def test_paper_selection_holds_its_keep_probabilities_and_concentrates() -> None:
    """Successful and failed rollouts differ only in phase 2: from the first batch on phase 2
    has p = 1 and the others the floor or little more; the answer's keep_probs are the p held
    for five batches; each trajectory keeps round(f C_i) chunks, most of them in phase 2."""
    rng = np.random.default_rng(3)
    config = RunConfig(**PAPER, keep_fraction=0.25)
    states: dict = {}
    answered = []
    for step in range(11):
        batch = diverging_batch(rng, config, diverging_phase=2, noise=0.05)
        sel = select_chunks(config, batch, states, f"step-{step}")
        states = sel.new_states
        answered.append(sel.keep_probs["task"].copy())
        kept_per_traj = np.bincount(batch.traj_of_chunk, weights=sel.mask,
                                    minlength=batch.num_trajectories)
        np.testing.assert_array_equal(kept_per_traj, 4)  # round(0.25 * 16)
        assert np.mean(batch.phase[sel.mask] == 2) >= 0.5
    p = answered[0]
    assert p[2] == 1.0 and np.all(p[[0, 1, 3]] < 0.2), p
    for held in answered[1:5]:
        np.testing.assert_array_equal(held, p)  # held until the window of batches 2-6
    assert states["task"].window_batches == 0  # batch 11 refreshed (1, 6, 11)
