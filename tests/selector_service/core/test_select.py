"""Statistical and behavioural tests of PCM selection: unbiasedness, concentration, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from selector_service.core import RunConfig, random_masks, request_rng, select_chunks
from tests.selector_service.core.batches import contiguous_phases, diverging_batch, make_batch


def test_horvitz_thompson_weights_are_unbiased() -> None:
    """E[mask * weight] = 1 for every chunk of an informative trajectory: the masked loss is an
    unbiased estimate of the full GRPO loss. Each selection starts from the same state, so pi is
    fixed and X = mask * weight has mean 1 and variance (1 - pi) / pi; the tolerance is 5
    standard errors of the mean over R draws (per-chunk false-alarm rate about 6e-7)."""
    rng = np.random.default_rng(0)
    config = RunConfig(phases=4, keep_fraction=0.2, feature_dim=4, eps=0.1, weighting="ht",
                       score="action")
    batch = diverging_batch(rng, config, groups=2, group_size=4, chunks=12)
    draws = 4000
    total = np.zeros(batch.num_chunks)
    pi = None
    for r in range(draws):
        sel = select_chunks(config, batch, {}, f"draw-{r}")
        if pi is None:
            pi = sel.inclusion
        np.testing.assert_array_equal(sel.inclusion, pi)  # same state -> same pi every draw
        total += sel.mask * sel.weight
    assert pi is not None
    mean = total / draws
    stderr = np.sqrt((1.0 - pi) / (pi * draws))
    assert np.all(np.abs(mean - 1.0) <= 5 * stderr + 1e-12), np.max(np.abs(mean - 1) / stderr)
    # The phases really are weighted unequally, so this is not the trivial uniform case.
    assert pi.max() / pi.min() > 5


def test_concentrates_on_the_diverging_phase() -> None:
    """Score `action` (the paper's): 4 phases; successful and failed rollouts differ only in
    phase 2. After 20 batches phase 2 has the largest keep weight (>= 0.5) and at least half the
    kept chunks are phase-2 chunks."""
    rng = np.random.default_rng(1)
    config = RunConfig(phases=4, keep_fraction=0.2, feature_dim=8, score="action")
    states: dict = {}
    for step in range(20):
        batch = diverging_batch(rng, config, diverging_phase=2)
        sel = select_chunks(config, batch, states, f"step-{step}")
        states = sel.new_states
    w = sel.keep_probs["task"]
    assert int(np.argmax(w)) == 2 and w[2] >= 0.5, w
    kept_phases = batch.phase[sel.mask]
    assert np.mean(kept_phases == 2) >= 0.5, np.bincount(kept_phases, minlength=4)
    # Over the whole run too (the state's counters).
    kept = states["task"].chunks_kept
    assert kept[2] >= kept.sum() / 2, kept


def test_random_mode_spreads_in_proportion_to_chunk_counts() -> None:
    """`random` is blind to phases: kept chunks follow chunk counts (phases of 2, 4, 6, 4)."""
    rng = np.random.default_rng(2)
    config = RunConfig(phases=4, keep_fraction=0.25, feature_dim=8, mode="random",
                       score="action")
    lengths_per_phase = np.array([2, 4, 6, 4])
    phase = np.repeat(np.arange(4), lengths_per_phase)
    states: dict = {}
    kept = np.zeros(4)
    for step in range(40):
        n = 16
        success = [i % 2 == 0 for i in range(n)]
        features = []
        for i in range(n):
            x = rng.normal(0, 0.1, size=(16, 8))
            x[phase == 2] += 1.0 if success[i] else -1.0  # diverges in phase 2: random ignores it
            features.append(x)
        batch = make_batch([16] * n, success, [f"g{i // 8}" for i in range(n)], [phase] * n,
                           features, config)
        sel = select_chunks(config, batch, states, f"step-{step}")
        states = sel.new_states
        kept += np.bincount(batch.phase[sel.mask], minlength=4)
    share = kept / kept.sum()
    expected = lengths_per_phase / lengths_per_phase.sum()
    # Multinomial standard error on the share, 5 sigma.
    stderr = np.sqrt(expected * (1 - expected) / kept.sum())
    assert np.all(np.abs(share - expected) <= 5 * stderr), (share, expected)
    # ... while pcm on the same data would concentrate on phase 2 (it sees the divergence).
    assert states["task"].scores[2] > 10 * np.nanmax(np.delete(states["task"].scores, 2))


def test_grpo_mode_keeps_every_chunk_of_informative_trajectories() -> None:
    rng = np.random.default_rng(3)
    config = RunConfig(phases=4, feature_dim=8, mode="grpo")
    batch = diverging_batch(rng, config, groups=3)
    sel = select_chunks(config, batch, {}, "r")
    assert sel.mask.all() and np.all(sel.weight == 1.0)


def test_random_masks_are_the_random_modes_selection() -> None:
    """`random_masks` draws what `select_chunks` answers in random mode (fixed budget round(f
    C_i), HT weights) for a batch whose every group is mixed, with the same random stream."""
    rng = np.random.default_rng(7)
    config = RunConfig(phases=4, feature_dim=8, mode="random", score="action",
                       budget_rule="fixed", weighting="ht", keep_fraction=0.3, seed=3)
    lengths = [5, 9, 12, 7, 16, 3, 10, 8]
    success = [i % 2 == 0 for i in range(8)]
    batch = make_batch(lengths, success, [f"g{i // 2}" for i in range(8)],
                       [contiguous_phases(c, 4) for c in lengths],
                       [rng.normal(size=(c, 8)) for c in lengths], config)
    sel = select_chunks(config, batch, {}, "req-1")
    mask, weight, pi = random_masks(lengths, 0.3, request_rng(3, "req-1"))
    np.testing.assert_array_equal(mask, sel.mask)
    np.testing.assert_array_equal(weight, sel.weight)
    np.testing.assert_array_equal(pi, sel.inclusion)


def test_random_masks_round_the_budget_half_to_even() -> None:
    """k_i = clamp(round(f C_i), 1, C_i) with ties to even, as the selector rounds: f 0.5 keeps
    2 of 5 chunks, 2 of 3, 4 of 7; at least 1, at most C_i; weights C_i / k_i on the mask."""
    with pytest.raises(ValueError, match="keep_fraction"):
        random_masks([4], 1.5, np.random.default_rng(0))
    lengths = [5, 3, 7, 10, 1]
    for f, kept in ((0.5, [2, 2, 4, 5, 1]), (0.0, [1] * 5), (0.01, [1] * 5), (1.0, lengths)):
        mask, weight, _ = random_masks(lengths, f, np.random.default_rng(0))
        offsets = np.cumsum([0, *lengths])
        for i, (c, k) in enumerate(zip(lengths, kept, strict=True)):
            m, w = mask[offsets[i]:offsets[i + 1]], weight[offsets[i]:offsets[i + 1]]
            assert m.sum() == k, (f, c)
            np.testing.assert_allclose(w[m], c / k)
            assert np.all(w[~m] == 0)


def test_all_equal_groups_are_skipped() -> None:
    config = RunConfig(phases=2, feature_dim=2)
    phases = [contiguous_phases(4, 2)] * 4
    feats = [np.ones((4, 2))] * 4
    batch = make_batch([4] * 4, [True, True, False, True], ["a", "a", "b", "b"], phases, feats,
                       config)
    sel = select_chunks(config, batch, {}, "r")
    masks = batch.split(sel.mask)
    assert not masks[0].any() and not masks[1].any()  # group a: all successes
    assert masks[2].sum() == 1 and masks[3].sum() == 1
    assert sel.skipped_trajectories == 2


def test_same_seed_and_request_id_give_identical_masks() -> None:
    rng = np.random.default_rng(4)
    config = RunConfig(phases=4, feature_dim=8, seed=7)
    batch = diverging_batch(rng, config)
    a = select_chunks(config, batch, {}, "req-1")
    b = select_chunks(config, batch, {}, "req-1")
    c = select_chunks(config, batch, {}, "req-2")
    d = select_chunks(RunConfig(phases=4, feature_dim=8, seed=8), batch, {}, "req-1")
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.weight, b.weight)
    assert not np.array_equal(a.mask, c.mask)
    assert not np.array_equal(a.mask, d.mask)


def test_keep_fraction_override_per_request() -> None:
    rng = np.random.default_rng(5)
    config = RunConfig(phases=4, feature_dim=8, keep_fraction=0.2)
    batch = diverging_batch(rng, config, chunks=20)
    sel = select_chunks(config, batch, {}, "r", keep_fraction=0.5)
    assert all(m.sum() == 10 for m in batch.split(sel.mask))


@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_state_update_counts_chunks(eps: float) -> None:
    rng = np.random.default_rng(6)
    config = RunConfig(phases=4, feature_dim=8, eps=eps)
    batch = diverging_batch(rng, config)
    sel = select_chunks(config, batch, {}, "r")
    state = sel.new_states["task"]
    np.testing.assert_array_equal(state.chunks_total, np.bincount(batch.phase, minlength=4))
    np.testing.assert_array_equal(state.chunks_kept,
                                  np.bincount(batch.phase[sel.mask], minlength=4))
    assert state.version == 1 and state.trajectories == batch.num_trajectories
    again = select_chunks(config, batch, sel.new_states, "r2").new_states["task"]
    assert again.version == 2
    np.testing.assert_array_equal(again.chunks_total, 2 * state.chunks_total)
