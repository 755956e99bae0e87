"""Step 3 of PCM: online phase scores (EMA) and phase keep weights."""

from __future__ import annotations

import numpy as np


def update_scores(scores: np.ndarray, v: np.ndarray, observed: np.ndarray,
                  eta: float) -> np.ndarray:
    """s_tp <- (1 - eta) s_tp + eta v_tp where observed; the first observation initialises.

    scores: (..., P) with NaN for never observed; v, observed: (..., P). Returns a new array.
    """
    first = observed & np.isnan(scores)
    ema = (1.0 - eta) * scores + eta * v
    return np.where(first, v, np.where(observed, ema, scores))


def keep_weights(scores: np.ndarray, eps: float) -> np.ndarray:
    """w_tp = eps / P + (1 - eps) s_tp / sum_q s_tq; uniform while no score exists.

    scores: (..., P) with NaN for unobserved phases (they count as 0). Rows sum to 1.
    """
    num_phases = scores.shape[-1]
    s = np.nan_to_num(scores, nan=0.0)
    total = s.sum(axis=-1, keepdims=True)
    uniform = np.full_like(s, 1.0 / num_phases)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = eps / num_phases + (1.0 - eps) * s / total
    return np.where(total > 0, w, uniform)
