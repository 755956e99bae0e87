"""Step 3 of PCM: online phase scores (EMA) and phase keep weights."""

from __future__ import annotations

import functools

import numpy as np


def update_scores(scores: np.ndarray, v: np.ndarray, observed: np.ndarray,
                  eta: float, observations: np.ndarray | None = None) -> np.ndarray:
    """s_tp <- (1 - eta) s_tp + eta v_tp where observed; the first observation initialises.

    With `observations` (n_tp, the batches that observed (t, p) before this one) the EMA is
    bias-corrected as Adam's moments are: m_n = (1 - eta) m_{n-1} + eta v_n from m_0 = 0 and
    s_n = m_n / (1 - (1 - eta)^n), so early scores are plain running means (every batch
    weighs alike) instead of leaning on the first batch (weight (1 - eta)^(n-1), 0.39 after 10
    batches at eta 0.1). The `signal` score uses it: its per-batch estimates are noisy.

    scores: (..., P) with NaN for never observed; v, observed: (..., P). Returns a new array.
    """
    first = observed & np.isnan(scores)
    if observations is None:
        ema = (1.0 - eta) * scores + eta * v
    else:
        decay_prev = 1.0 - ema_decay(1.0 - eta, observations)  # c_{n-1}
        decay_new = 1.0 - ema_decay(1.0 - eta, observations + 1)  # c_n
        ema = ((1.0 - eta) * scores * decay_prev + eta * v) / decay_new
    return np.where(first, v, np.where(observed, ema, scores))


def ema_decay(base: float, exponents: np.ndarray) -> np.ndarray:
    """base ** n elementwise for integer n >= 0, by binary exponentiation: float64 products
    in a fixed order (the result times base^(2^k) for each set bit k, lowest first), so that
    the Redis store's fold (Lua, store/lua.py) computes the same bits. (NumPy's `**` may use
    a vectorised pow that differs from the C library's in the last bit.)"""
    n = np.asarray(exponents, dtype=np.int64)
    return np.array([_power(float(base), k) for k in n.ravel().tolist()],
                    dtype=np.float64).reshape(n.shape)


@functools.lru_cache(maxsize=65536)
def _power(base: float, n: int) -> float:
    out, square = 1.0, base
    while n > 0:
        if n & 1:
            out = out * square
        square = square * square
        n >>= 1
    return out


def keep_weights(scores: np.ndarray, eps: float) -> np.ndarray:
    """w_tp = eps / P + (1 - eps) s+_tp / sum_q s+_tq with s+ = max(s, 0); uniform while no
    positive score exists.

    scores: (..., P) with NaN for unobserved phases (they count as 0); the `signal` score's
    estimates can be negative (noise) and count as 0 too. Rows sum to 1.
    """
    num_phases = scores.shape[-1]
    s = np.maximum(np.nan_to_num(scores, nan=0.0), 0.0)
    total = s.sum(axis=-1, keepdims=True)
    uniform = np.full_like(s, 1.0 / num_phases)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = eps / num_phases + (1.0 - eps) * s / total
    return np.where(total > 0, w, uniform)


def paper_keep_probs(scores: np.ndarray, p_min: float) -> np.ndarray:
    """p_tp = max(p_min, s+_tp / max_q s+_tq), the paper's keep probabilities (arXiv 2605.16154,
    Sec. 4.3-4.4: the scores share-normalised, then max-normalised, then floored); 1 for every
    phase while no positive score exists. Not a distribution: each chunk is weighted by its
    phase's p_tp (`keep_rule` paper).

    scores: (..., P) with NaN for unobserved phases (they count as 0)."""
    s = np.maximum(np.nan_to_num(scores, nan=0.0), 0.0)
    top = s.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.maximum(p_min, s / top)
    return np.where(top > 0, p, 1.0)


def phase_keep_weights(keep_rule: str, scores: np.ndarray, eps: float) -> np.ndarray:
    """The phase keep weights of `keep_rule`: share (`keep_weights`, rows sum to 1) or paper
    (`paper_keep_probs` with p_min = eps)."""
    if keep_rule == "share":
        return keep_weights(scores, eps)
    elif keep_rule == "paper":
        return paper_keep_probs(scores, eps)
    else:
        raise ValueError(f"unknown keep_rule {keep_rule!r}")
