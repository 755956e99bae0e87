"""A trainer's step time as a function of the chunks it keeps, fitted from the timings of its
outcome reports (budget objective `rate`, core/budget.py).

A step's time is its rollouts and selection, which do not depend on the mask, plus the update,
which grows with the kept chunks K:

    t(K) = t_0 + c K,   t_0 = median(rollout_s + select_s) + a,   backward_s ~ a + c K

over the trainer's newest reports, with c the Theil-Sen slope (the median of the pairwise
slopes) and a the median of backward_s - c K: a step stretched by a pause, a checkpoint or a
busy machine moves neither, where a mean and least squares would follow it. A masked step then
takes t(K) / t(M) of a full one, M the informative chunks, and progress per second relative to
keeping every chunk is e(K) t(M) / t(K).

The fit stands only on evidence: it needs `MIN_REPORTS` reports whose kept chunks vary (the
largest at least `MIN_SPREAD` times the smallest, else the slope is not identified) and a
positive slope; otherwise there is no cost model and the budget falls back to its target
efficiency. A negative intercept is refitted through the origin (c = median backward_s / K).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_REPORTS = 5  # reports of the trainer before the fit is used
MAX_REPORTS = 20  # the newest reports the fit uses
MIN_SPREAD = 1.1  # largest kept chunks over smallest among them


@dataclass(frozen=True)
class StepCost:
    """t(K) = fixed_s + per_chunk_s K, in seconds."""

    fixed_s: float  # t_0: rollouts, selection and the update's part that does not grow with K
    per_chunk_s: float  # c: seconds per kept chunk, > 0
    reports: int  # reports the fit used

    def seconds(self, kept: float) -> float:
        return self.fixed_s + self.per_chunk_s * kept


def fit_step_cost(reports: Sequence[tuple[float, float, int]]) -> StepCost | None:
    """The step cost from a trainer's reports, oldest first: (rollout_s + select_s,
    backward_s, kept_chunks) each. None while the evidence does not identify it."""
    rows = [r for r in reports[-MAX_REPORTS:] if r[2] > 0]
    if len(rows) < MIN_REPORTS:
        return None
    other = np.array([r[0] for r in rows], dtype=np.float64)  # (R,)
    backward = np.array([r[1] for r in rows], dtype=np.float64)  # (R,)
    kept = np.array([r[2] for r in rows], dtype=np.float64)  # (R,)
    if kept.max() < MIN_SPREAD * kept.min():
        return None
    i, j = np.triu_indices(len(rows), k=1)
    pairs = kept[i] != kept[j]
    slope = float(np.median((backward[j] - backward[i])[pairs] / (kept[j] - kept[i])[pairs]))
    intercept = float(np.median(backward - slope * kept))
    if intercept < 0:  # through the origin
        intercept, slope = 0.0, float(np.median(backward / kept))
    if not slope > 0:
        return None
    return StepCost(fixed_s=float(np.median(other)) + intercept, per_chunk_s=slope,
                    reports=len(rows))
