"""The adaptive budget (budget_rule auto): unbiased weights, the least budget that meets the
target, the rate floor, and its fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from pcm_contract.errors import InvalidArgument
from selector_service.core import RunConfig, select_chunks
from selector_service.core.budget import (
    Budget,
    PhaseWeighting,
    batch_noise,
    best_rate,
    choose_budget,
    neyman_probabilities,
    sampling_noise,
)
from selector_service.core.costs import StepCost
from tests.selector_service.core.batches import diverging_batch, make_batch

AUTO = dict(phases=4, feature_dim=8, budget_rule="auto", weighting="ht")


def _heavy_tailed_batch(rng: np.random.Generator, config: RunConfig, groups: int = 4):
    """Every group informative; chunk sketches with norms spread over two orders of magnitude."""
    n, chunks = groups * 8, 12
    success = [(i % 8) < 1 + (i // 8) % 6 for i in range(n)]
    features = [rng.normal(size=(chunks, config.feature_dim))
                * np.exp(rng.normal(0.0, 1.0, size=(chunks, 1))) for _ in range(n)]
    phases = [rng.integers(0, config.phases, chunks) for _ in range(n)]
    return make_batch([chunks] * n, success, [f"g{i // 8}" for i in range(n)], phases, features,
                      config)


def test_auto_weights_are_unbiased_for_the_full_batch_gradient() -> None:
    rng = np.random.default_rng(0)
    config = RunConfig(**AUTO)
    batch = _heavy_tailed_batch(rng, config)
    full = batch.features.astype(np.float64).sum(axis=0)  # every chunk is informative
    draws = np.array([
        (select_chunks(config, batch, {}, f"r{i}").weight[:, None] * batch.features).sum(axis=0)
        for i in range(3000)])
    # the mean of the weighted sums over draws is the full sum, within 4 standard errors
    se = draws.std(axis=0, ddof=1) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(axis=0) - full) < 4 * se + 1e-9)


def test_the_budget_is_the_least_that_meets_the_target() -> None:
    rng = np.random.default_rng(1)
    config = RunConfig(**AUTO, target_efficiency=0.7, min_keep_fraction=0.01)
    batch = _heavy_tailed_batch(rng, config)
    sel = select_chunks(config, batch, {}, "r")
    b = sel.budget
    assert b is not None and sel.kept_chunks == b.kept  # exactly K chunks drawn
    assert b.efficiency >= 0.7
    x = batch.features.astype(np.float64)
    sq, norms = (x * x).sum(axis=1), np.sqrt((x * x).sum(axis=1))
    one_less = neyman_probabilities(norms, b.kept - 1, config.rate_floor)
    total = b.signal + b.noise
    assert total / (total + sampling_noise(one_less, sq)) < 0.7  # K - 1 would not do
    # a higher target keeps more; the kept fraction goes into the answer's figures
    more = select_chunks(config.updated(target_efficiency=0.9), batch, {}, "r").budget
    assert more is not None and more.kept > b.kept and more.efficiency >= 0.9


def test_uneven_sketches_need_fewer_chunks_than_uniform_sampling() -> None:
    rng = np.random.default_rng(2)
    config = RunConfig(**AUTO)
    batch = _heavy_tailed_batch(rng, config)
    pcm = select_chunks(config, batch, {}, "r").budget
    uniform = select_chunks(config.updated(mode="random"), batch, {}, "r").budget
    assert pcm is not None and uniform is not None
    assert pcm.kept < uniform.kept
    assert pcm.efficiency >= config.target_efficiency <= uniform.efficiency


@pytest.mark.parametrize("rho", [0.0, 0.25, 1.0])
def test_the_rate_floor_bounds_every_chunks_keep_probability(rho: float) -> None:
    rng = np.random.default_rng(3)
    config = RunConfig(**AUTO, rate_floor=rho)
    batch = _heavy_tailed_batch(rng, config)
    b = select_chunks(config, batch, {}, "r").budget
    assert b is not None
    assert b.pi.sum() == pytest.approx(b.kept)
    assert b.pi.min() >= rho * b.kept / b.informative - 1e-12
    if rho == 1.0:  # the floor at 1 is uniform sampling
        np.testing.assert_allclose(b.pi, b.kept / b.informative)


def test_uninformative_trajectories_keep_nothing_and_one_group_falls_back() -> None:
    rng = np.random.default_rng(4)
    config = RunConfig(**AUTO, keep_fraction=0.25)
    batch = diverging_batch(rng, config.updated(), groups=1)  # one informative group
    sel = select_chunks(config, batch, {}, "r")
    assert sel.budget is not None and np.isnan(sel.budget.noise)
    assert sel.kept_chunks == round(0.25 * batch.num_chunks)  # the run's keep fraction
    lost = make_batch([5, 5], [True, True], ["a", "a"], [np.zeros(5, int)] * 2,
                      [np.ones((5, 8))] * 2, config)
    assert select_chunks(config, lost, {}, "r").kept_chunks == 0


def test_a_requests_keep_fraction_sets_the_count_not_the_allocation() -> None:
    rng = np.random.default_rng(5)
    config = RunConfig(**AUTO)
    batch = _heavy_tailed_batch(rng, config)
    sel = select_chunks(config, batch, {}, "r", keep_fraction=0.3)
    assert sel.kept_chunks == round(0.3 * batch.num_chunks)
    assert sel.weight[sel.mask].max() > sel.weight[sel.mask].min()  # still by the sketches


def test_noise_is_the_spread_of_the_group_sums() -> None:
    features = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    groups = np.array([0, 0, 1, 1])
    noise, g = batch_noise(features, groups, np.ones(4, bool))
    # T_0 = (4, 0), T_1 = (0, 2): mean (2, 1); spread 2 * (4 + 1) = 10; times G / (G - 1) = 2
    assert g == 2 and noise == pytest.approx(20.0)


def test_auto_needs_the_signal_scores_sketches_and_names_the_field() -> None:
    with pytest.raises(InvalidArgument) as err:
        RunConfig(budget_rule="auto", score="action")
    assert err.value.field == "budget_rule" and "fixed" in str(err.value)
    RunConfig(budget_rule="auto", score="action", mode="grpo")  # grpo keeps every chunk


def test_choose_budget_with_a_fixed_fraction_keeps_round_f_m() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(40, 4))
    b = choose_budget(x, np.ones(40, bool), np.repeat(np.arange(4), 10), 0.0, target=0.6,
                      min_fraction=0.1, rate_floor=0.25, fixed_fraction=0.5,
                      fallback_fraction=0.2)
    assert b.kept == 20 and b.keep_fraction == 0.5


def _sketch_batch(rng: np.random.Generator, config: RunConfig, groups: int = 4,
                  chunks: int = 16) -> object:
    """Advantage-weighted gradient sketches x_ic = A_i (noise), plus |A_i| u in phase 2 (the
    successful rollouts' actions differ there, along u): an expected gradient in phase 2 only."""
    n = groups * 8
    success = np.zeros(n, dtype=bool)
    for g in range(groups):
        success[g * 8 + rng.choice(8, size=int(rng.integers(1, 8)), replace=False)] = True
    u = np.full(config.feature_dim, 0.6)
    phases, features = [], []
    for i in range(n):
        group = success[(i // 8) * 8:(i // 8 + 1) * 8]
        adv = (success[i] - group.mean()) / group.std()
        phase = np.minimum(np.arange(chunks) * config.phases // chunks, config.phases - 1)
        x = adv * rng.normal(size=(chunks, config.feature_dim))
        x[phase == 2] += abs(adv) * u
        phases.append(phase)
        features.append(x)
    return make_batch([chunks] * n, list(success), [f"g{i // 8}" for i in range(n)], phases,
                      features, config)


def test_wiener_weighting_damps_the_noise_only_phases() -> None:
    """Sketches whose expected value is non-zero only in phase 2 (`_sketch_batch`): once the
    run has scores, phase weighting wiener weights the other phases' kept chunks by little (the
    floor eps, or the share their noise-level scores claim) and phase 2's by nearly 1; it keeps
    fewer chunks than the unbiased rule at the same target."""
    base = dict(AUTO, eps=0.05, target_efficiency=0.6, min_keep_fraction=0.05)
    plain, wiener = RunConfig(**base), RunConfig(**base, phase_weighting="wiener")
    rng = np.random.default_rng(4)
    states: dict = {}
    for step in range(15):  # the run's phase scores from the unbiased rule's batches
        states = select_chunks(plain, _sketch_batch(rng, plain), states,
                               f"s{step}").new_states
    kept_plain, kept_wiener = [], []
    for step in range(10):
        batch = _sketch_batch(rng, plain)
        a = select_chunks(plain, batch, states, f"r{step}")
        b = select_chunks(wiener, batch, states, f"r{step}")
        assert b.budget is not None and b.budget.alpha is not None and a.budget is not None
        alpha = b.budget.alpha
        noise_only = batch.phase != 2
        assert np.all(alpha[noise_only] >= 0.05) and np.all(alpha[noise_only] < 0.35)
        assert np.all(alpha[~noise_only] > 0.9), np.unique(alpha)
        np.testing.assert_allclose(b.weight[b.mask], (alpha / b.inclusion)[b.mask])
        assert b.budget.efficiency >= 0.6
        kept_plain.append(a.kept_chunks)
        kept_wiener.append(b.kept_chunks)
    assert np.mean(kept_wiener) < 0.8 * np.mean(kept_plain), (kept_wiener, kept_plain)


def test_wiener_weighting_needs_the_adaptive_budget() -> None:
    with pytest.raises(InvalidArgument) as err:
        RunConfig(phases=4, feature_dim=8, phase_weighting="wiener")
    assert err.value.field == "phase_weighting"


SIGNAL = 300.0  # S: about 5x the noise of 64 unit-norm chunks


def _uniform_budget(cost: StepCost | None, m: int = 64,
                    signal: float = SIGNAL) -> tuple[np.ndarray, Budget]:
    """A batch of M unit-norm chunks in 8 groups, drawn uniformly (rate floor 1)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(m, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    b = choose_budget(x, np.ones(m, bool), np.repeat(np.arange(8), m // 8), signal,
                      target=0.6, min_fraction=0.1, rate_floor=1.0, fallback_fraction=0.2,
                      cost=cost)
    return x, b


def test_the_rate_objective_keeps_the_k_with_the_most_progress_per_second() -> None:
    cost = StepCost(fixed_s=2.0, per_chunk_s=0.05, reports=5)
    x, b = _uniform_budget(cost)
    m = x.shape[0]
    noise = batch_noise(x, np.repeat(np.arange(8), m // 8), np.ones(m, bool))[0]

    def rate(k: int) -> float:  # uniform draws: N_samp = (M / K - 1) sum ||x||^2, ||x|| = 1
        total = SIGNAL + noise
        return total / (total + (m / k - 1) * m) / cost.seconds(k)

    best = max(range(7, m + 1), key=rate)  # f_min M rounded up is 7
    assert b.kept == best
    assert b.rate == pytest.approx(b.efficiency * cost.seconds(m) / cost.seconds(b.kept))
    assert b.rate > 1.0 and b.kept < m  # masking pays here
    # with no signal, progress per step is proportional to K: masking never pays
    assert _uniform_budget(cost, signal=0.0)[1].kept == m


def test_the_rate_objective_keeps_every_chunk_where_the_update_is_cheap() -> None:
    x, b = _uniform_budget(StepCost(fixed_s=100.0, per_chunk_s=0.001, reports=5))
    assert b.kept == x.shape[0] and b.rate == pytest.approx(1.0)
    # without a cost model the target rule chooses, and there is no rate
    _, target = _uniform_budget(None)
    assert target.kept < x.shape[0] and target.rate is None and target.efficiency >= 0.6


def test_the_rate_is_against_every_chunk_under_the_same_phase_weights() -> None:
    # Wiener weights on two cells, one with signal and one noise only: the weighted update's
    # e exceeds the raw batch's even at K = M, and the rate must not count that gain
    m = 64
    rng = np.random.default_rng(3)
    x = rng.normal(size=(m, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    groups, include = np.repeat(np.arange(8), m // 8), np.ones(m, bool)
    cell_signal, cell_noise = np.array([200.0, 0.01]), np.array([30.0, 30.0])
    weighting = PhaseWeighting(cell_signal, cell_noise, cell_signal / (cell_signal + cell_noise),
                               np.arange(m) % 2)
    cost = StepCost(fixed_s=2.0, per_chunk_s=0.05, reports=5)
    kwargs = dict(target=0.6, min_fraction=0.1, rate_floor=1.0, fallback_fraction=0.2,
                  weighting=weighting)
    b = choose_budget(x, include, groups, float(cell_signal.sum()), cost=cost, **kwargs)
    every = choose_budget(x, include, groups, float(cell_signal.sum()), fixed_fraction=1.0,
                          **kwargs)
    assert every.kept == m and every.efficiency > 1.1  # the weights' own gain
    speedup = cost.seconds(m) / cost.seconds(b.kept)
    assert b.rate == pytest.approx(b.efficiency / every.efficiency * speedup)
    assert b.kept < m and 1.0 < b.rate <= speedup


def test_best_rate_finds_the_peak_of_a_unimodal_rate() -> None:
    for peak in (1, 2, 17, 50, 99, 100):
        assert best_rate(lambda k, p=peak: -abs(k - p), 1, 100) == peak


def test_the_rate_objective_needs_the_adaptive_budget() -> None:
    with pytest.raises(InvalidArgument) as err:
        RunConfig(phases=4, feature_dim=8, budget_objective="rate")
    assert err.value.field == "budget_objective" and "auto" in str(err.value)
    RunConfig(**AUTO, budget_objective="rate")
