"""The success-failure variance, the EMA scores and the keep weights against hand computations."""

from __future__ import annotations

import numpy as np

from selector_service.core import (
    informative_trajectories,
    keep_weights,
    success_failure_variance,
    update_scores,
)


def test_variance_matches_the_formula() -> None:
    rng = np.random.default_rng(0)
    m, d, tasks, phases = 200, 3, 2, 3
    task = rng.integers(0, tasks, m)
    phase = rng.integers(0, phases, m)
    succ = rng.random(m) < 0.4
    x = rng.normal(size=(m, d)).astype(np.float32)
    include = rng.random(m) < 0.8
    v, observed = success_failure_variance(task, phase, succ, x, include, tasks, phases)
    for t in range(tasks):
        for p in range(phases):
            sel = include & (task == t) & (phase == p)
            s, f = x[sel & succ].astype(np.float64), x[sel & ~succ].astype(np.float64)
            if len(s) and len(f):
                ns, nf = len(s), len(f)
                expected = ns * nf / (ns + nf) ** 2 * np.sum((s.mean(0) - f.mean(0)) ** 2)
                assert observed[t, p]
                np.testing.assert_allclose(v[t, p], expected, rtol=1e-4)
            else:
                assert not observed[t, p] and v[t, p] == 0


def test_variance_sort_path_matches_matmul_path() -> None:
    """Many tasks take the sort-based segment sums; they must agree with the small-case path."""
    rng = np.random.default_rng(1)
    m, d, phases = 3000, 4, 4
    task = rng.integers(0, 40, m)  # 40 x 4 x 2 cells: above the one-hot threshold
    phase = rng.integers(0, phases, m)
    succ = rng.random(m) < 0.5
    x = rng.normal(size=(m, d))
    include = np.ones(m, dtype=bool)
    v_all, obs_all = success_failure_variance(task, phase, succ, x, include, 40, phases)
    for t in (0, 17, 39):
        sel = task == t
        v_t, obs_t = success_failure_variance(np.zeros(sel.sum(), dtype=np.int64), phase[sel],
                                              succ[sel], x[sel], include[sel], 1, phases)
        np.testing.assert_allclose(v_all[t], v_t[0], rtol=1e-6)
        np.testing.assert_array_equal(obs_all[t], obs_t[0])


def test_informative_trajectories() -> None:
    groups = np.array([0, 0, 1, 1, 2, 2, 2])
    success = np.array([True, False, True, True, False, False, True])
    np.testing.assert_array_equal(informative_trajectories(groups, success),
                                  [True, True, False, False, True, True, True])


def test_ema_first_observation_initialises() -> None:
    scores = np.array([np.nan, 2.0, 2.0, np.nan])
    v = np.array([1.0, 1.0, 5.0, 9.0])
    observed = np.array([True, True, False, False])
    new = update_scores(scores, v, observed, eta=0.1)
    np.testing.assert_allclose(new[:3], [1.0, 0.9 * 2 + 0.1 * 1, 2.0])
    assert np.isnan(new[3])


def test_keep_weights() -> None:
    w = keep_weights(np.array([[np.nan, np.nan, np.nan, np.nan], [0.0, 3.0, 1.0, np.nan]]),
                     eps=0.2)
    np.testing.assert_allclose(w[0], 0.25)  # uniform while no score exists
    np.testing.assert_allclose(w[1], [0.05, 0.05 + 0.8 * 0.75, 0.05 + 0.8 * 0.25, 0.05])
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
