"""Step 4 of PCM: fixed-budget sampling without replacement, with exact inclusion probabilities.

Every trajectory i keeps exactly k_i of its C_i chunks. Chunk c is included with probability
pi_ic = min(1, k_i q_ic) (q normalised within the trajectory), iterated so that the capped chunks'
excess budget goes to the others: the standard inclusion-probability-proportional-to-size
construction. The draw is randomised systematic sampling: capped chunks (pi = 1) are always
kept, the others are laid out in random order on [0, k_i - #capped) with lengths pi_ic, and the
chunks hit by u, u + 1, ... (u ~ U[0, 1)) are kept. That keeps exactly k_i chunks, and chunk c is
kept with probability exactly pi_ic whatever the order.
"""

from __future__ import annotations

import numpy as np

_CAP = 1.0 - 1e-12


def budgets(lengths: np.ndarray, keep_fraction: float) -> np.ndarray:
    """k_i = clamp(round(f C_i), 1, C_i), int64 (N,). Rounds half to even, as numpy does."""
    return np.clip(np.rint(keep_fraction * lengths), 1, lengths).astype(np.int64)


def inclusion_probabilities(
    q: np.ndarray,  # float64 (M,): chunk weights, >= 0
    traj_of_chunk: np.ndarray,  # int64 (M,)
    k: np.ndarray,  # int64 (N,): budget per trajectory, 0 <= k_i <= C_i
) -> np.ndarray:
    """pi (M,) float64 with sum over each trajectory's chunks equal to k_i and 0 <= pi <= 1."""
    n = k.shape[0]
    lengths = np.bincount(traj_of_chunk, minlength=n)
    # A trajectory whose weights are all 0 (possible only with eps = 0) samples uniformly.
    q_total = np.bincount(traj_of_chunk, weights=q, minlength=n)
    q = np.where(q_total[traj_of_chunk] > 0, q, 1.0)
    capped = np.zeros(q.shape[0], dtype=bool)
    pi = np.zeros(q.shape[0], dtype=np.float64)
    for _ in range(int(lengths.max(initial=0)) + 1):
        free = ~capped
        n_capped = np.bincount(traj_of_chunk, weights=capped, minlength=n)
        budget = k - n_capped  # (N,) budget left for uncapped chunks
        q_free = np.where(free, q, 0.0)
        q_free_total = np.bincount(traj_of_chunk, weights=q_free, minlength=n)
        # Where the uncapped chunks' weights are all 0 but budget remains, spread it uniformly.
        zero = (q_free_total <= 0) & (budget > 0)
        if zero.any():
            q_free = np.where(free & zero[traj_of_chunk], 1.0, q_free)
            q_free_total = np.bincount(traj_of_chunk, weights=q_free, minlength=n)
        # Share first, then budget: budget / q_total would overflow for tiny (denormal) q.
        total_c = q_free_total[traj_of_chunk]
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total_c > 0, q_free / total_c, 0.0)  # (M,)
        pi = np.where(capped, 1.0, budget[traj_of_chunk] * share)
        newly = free & (pi >= _CAP)
        if not newly.any():
            break
        capped |= newly
    return np.where(capped, 1.0, np.minimum(pi, _CAP))


def systematic_sample(
    pi: np.ndarray,  # float64 (M,): inclusion probabilities
    traj_of_chunk: np.ndarray,  # int64 (M,)
    k: np.ndarray,  # int64 (N,): sum of pi per trajectory
    rng: np.random.Generator,
) -> np.ndarray:
    """bool (M,): exactly k_i chunks of trajectory i, chunk c kept with probability pi_ic."""
    n, m = k.shape[0], pi.shape[0]
    certain = pi >= 1.0
    # Random order within each trajectory, certain chunks first (their segments are empty and
    # sit at 0, so rounding at the far end can never hand one of them a hit).
    jitter = np.where(certain, 0.0, 0.25 + 0.5 * rng.random(m))
    order = np.argsort(traj_of_chunk + jitter, kind="stable")  # (M,)
    traj_o = traj_of_chunk[order]
    pi_o = np.where(certain[order], 0.0, pi[order])  # certain chunks take no room on the line
    # Cumulative length within each trajectory: the upper end of each chunk's segment.
    csum = np.cumsum(pi_o)
    starts = np.flatnonzero(np.r_[True, traj_o[1:] != traj_o[:-1]])
    ends = np.r_[starts[1:], m] - 1
    before = np.r_[0.0, csum[:-1]][starts]  # cumsum before each trajectory
    upper = csum - np.repeat(before, np.diff(np.r_[starts, m]))
    # Pin each trajectory's last end to its exact remaining budget so the segments tile
    # [0, k_i - #certain) exactly and the count kept is exact.
    n_certain = np.bincount(traj_of_chunk, weights=certain, minlength=n)
    upper[ends] = (k - n_certain)[traj_o[ends]]
    lower = np.r_[0.0, upper[:-1]]
    lower[starts] = 0.0
    u = np.asarray(rng.random(n))[traj_o]  # one offset per trajectory
    hits = np.ceil(upper - u) - np.ceil(lower - u)  # integers u + j inside [lower, upper)
    keep = np.empty(m, dtype=bool)
    keep[order] = hits > 0
    return keep | certain


def successive_sample(
    q: np.ndarray,  # float64 (M,): chunk weights, >= 0
    traj_of_chunk: np.ndarray,  # int64 (M,)
    k: np.ndarray,  # int64 (N,): chunks to draw per trajectory, 0 <= k_i <= C_i
    rng: np.random.Generator,
) -> np.ndarray:
    """bool (M,): k_i chunks of trajectory i drawn one after another, each with probability
    proportional to its weight among the chunks not yet drawn: weighted sampling without
    replacement (Plackett-Luce; the paper's Eq. 10), as the k_i largest of log q + Gumbel
    noise (Efraimidis and Spirakis 2006). Chunks of weight 0 come last, in random order.
    Its inclusion probabilities have no closed form; `inclusion_probabilities(q, ...)` is
    the proportional-to-size approximation of them."""
    m = q.shape[0]
    with np.errstate(divide="ignore"):
        key = np.log(q) + rng.gumbel(size=m)  # (M,), -inf for weight 0
    tie = np.asarray(rng.random(m))  # orders the weight-0 chunks (all -inf) at random
    order = np.lexsort((-tie, -key, traj_of_chunk))  # by trajectory, then key descending
    traj_o = traj_of_chunk[order]
    first = np.searchsorted(traj_o, traj_o, side="left")  # each trajectory's first position
    rank = np.arange(m) - first  # (M,) 0 for each trajectory's largest key
    keep = np.empty(m, dtype=bool)
    keep[order] = rank < k[traj_o]
    return keep
