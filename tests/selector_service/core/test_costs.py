"""The trainer's step time t(K) = t_0 + c K, fitted from its reported timings (budget objective
rate): only on evidence that identifies it."""

from __future__ import annotations

import numpy as np
import pytest

from selector_service.core.costs import MAX_REPORTS, MIN_REPORTS, fit_step_cost


def _reports(kept: list[int], rollout: float = 3.0, a: float = 0.5, c: float = 0.01,
             noise: float = 0.0, seed: int = 0) -> list[tuple[float, float, int]]:
    rng = np.random.default_rng(seed)
    return [(rollout, a + c * k + noise * rng.normal(), k) for k in kept]


def test_the_fit_recovers_the_step_time_from_varying_kept_chunks() -> None:
    cost = fit_step_cost(_reports([80, 120, 95, 150, 60, 110]))
    assert cost is not None and cost.reports == 6
    assert cost.per_chunk_s == pytest.approx(0.01)
    assert cost.fixed_s == pytest.approx(3.5)  # rollouts and selection plus the intercept
    assert cost.seconds(200) == pytest.approx(5.5)


def test_noisy_timings_still_fit_near_the_truth() -> None:
    cost = fit_step_cost(_reports(list(range(60, 160, 5)), noise=0.02, seed=1))
    assert cost is not None and cost.per_chunk_s == pytest.approx(0.01, rel=0.2)


def test_only_the_newest_reports_count() -> None:
    old = _reports([50, 100, 150] * 10, c=0.05)
    new = _reports([60, 90, 120, 150, 70] * 4, c=0.01)
    cost = fit_step_cost(old + new)
    assert cost is not None and cost.reports == MAX_REPORTS
    assert cost.per_chunk_s == pytest.approx(0.01)


@pytest.mark.parametrize("reports", [
    _reports([80, 120, 95, 150][:MIN_REPORTS - 1]),  # too few
    _reports([100, 101, 100, 102, 100, 101]),  # the kept chunks hardly vary: no slope
    _reports([80, 120, 95, 150, 60], a=0.0, c=0.0),  # no timings reported (zeros)
    _reports([80, 120, 95, 150, 60], a=3.0, c=-0.01),  # backward falls as K grows: not a cost
])
def test_no_cost_model_without_evidence(reports: list[tuple[float, float, int]]) -> None:
    assert fit_step_cost(reports) is None


def test_a_negative_intercept_is_refitted_through_the_origin() -> None:
    cost = fit_step_cost(_reports([80, 120, 95, 150, 60], a=-0.2, c=0.01))
    assert cost is not None and cost.fixed_s == pytest.approx(3.0)  # the rollouts alone
    kept = np.array([80, 120, 95, 150, 60.0])
    assert cost.per_chunk_s == pytest.approx(np.median((0.01 * kept - 0.2) / kept))


def test_a_stretched_step_moves_neither_the_rollouts_nor_the_slope() -> None:
    """A pause during one step's rollout and another's update (e.g. the machine was busy)."""
    reports = _reports([80, 120, 95, 150, 60, 110, 70, 130])
    reports[2] = (reports[2][0] + 600.0, reports[2][1], reports[2][2])
    reports[5] = (reports[5][0], reports[5][1] + 600.0, reports[5][2])
    cost = fit_step_cost(reports)
    assert cost is not None
    assert cost.per_chunk_s == pytest.approx(0.01) and cost.fixed_s == pytest.approx(3.5)
