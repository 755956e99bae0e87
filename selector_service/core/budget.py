"""Budget rule `auto`: how many chunks to keep, and which, from the batch's signal and noise.

The masked update is a Horvitz-Thompson estimate of the full batch's gradient: chunk c is kept
with probability pi_c and weighted 1 / pi_c, so its expectation is the full gradient whatever
the pi, and only its variance depends on them. With g the full batch's gradient,
S = ||E g||^2 its squared expectation and N = tr Var(g) its noise, a step's expected progress
with a tuned step size is proportional to S / (S + noise) (McCandlish et al. 2018, "An
Empirical Model of Large-Batch Training", arXiv 1812.06162, eq. 2.8 with H ~ I), so the masked
update keeps the fraction

    e(pi) = (S + N) / (S + N + N_samp(pi)),   N_samp(pi) = sum_c (1 / pi_c - 1) ||x_c||^2

of the full batch's progress (N_samp: the variance that sampling adds, for independent draws;
x_c the chunk's gradient sketch). For a given number of kept chunks K = sum_c pi_c, N_samp is
least for pi_c proportional to ||x_c|| (Neyman allocation with one chunk per stratum), capped at
1. The rule keeps the fewest chunks K in [f_min M, M] with e >= target, M the informative
chunks, with

    pi_c = min(1, K q_c / sum q),   q_c = rho / M + (1 - rho) ||x_c|| / sum_d ||x_d||

(the cap's excess passed on, `sampling.inclusion_probabilities`): the rate floor rho keeps every
chunk, hence every phase, at a keep rate of at least rho times the uniform rate K / M, and bounds
the weights 1 / pi_c by M / (rho K).

Estimates, in the features' space (the `signal` score's advantage-weighted gradient sketches):
N from the spread of the informative groups' chunk sums T_g (groups are independent draws),
N = G / (G - 1) sum_g ||T_g - mean T||^2; S from the run's phase scores s_tp (EMAs of
||E S_tp||^2, `core/signal.py`), S = sum_t G_t^2 sum_p max(s_tp, 0), which leaves out the
phase-to-phase and task-to-task cross terms. S enters only to allow fewer chunks where the
signal dominates the noise; where it is small the rule reduces to N_samp <= (1/target - 1) N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from selector_service.core.sampling import inclusion_probabilities


@dataclass(frozen=True)
class Budget:
    pi: np.ndarray  # float64 (M,): inclusion probabilities, 0 off the informative chunks
    kept: int  # K = sum pi: chunks to keep
    informative: int  # M: chunks of informative trajectories
    signal: float  # S
    noise: float  # N
    sampling_noise: float  # N_samp(pi)
    efficiency: float  # e(pi), the predicted share of the full batch's progress per step

    @property
    def keep_fraction(self) -> float:
        return self.kept / self.informative if self.informative else 0.0


def batch_noise(features: np.ndarray, group_of_chunk: np.ndarray,
                include: np.ndarray) -> tuple[float, int]:
    """N (the full batch's gradient noise, tr Var of the sum of the included chunks' features)
    and G (the groups it comes from). N is NaN with fewer than two groups.

    features: (M, D); group_of_chunk: int64 (M,); include: bool (M,)."""
    groups, inverse = np.unique(group_of_chunk[include], return_inverse=True)
    g = groups.shape[0]
    if g < 2:
        return math.nan, g
    sums = np.zeros((g, features.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, features[include].astype(np.float64))  # (G, D): T_g
    spread = sums - sums.mean(axis=0)
    return float(g / (g - 1) * np.einsum("gd,gd->", spread, spread)), g


def sampling_noise(pi: np.ndarray, sq_norms: np.ndarray) -> float:
    """N_samp = sum_c (1 / pi_c - 1) ||x_c||^2 over chunks with pi_c > 0."""
    on = pi > 0
    return float(np.sum((1.0 / pi[on] - 1.0) * sq_norms[on]))


def neyman_probabilities(norms: np.ndarray, kept: int, rate_floor: float) -> np.ndarray:
    """pi (M,) summing to `kept`: proportional to q_c = rho / M + (1 - rho) ||x_c|| / sum ||x||,
    capped at 1 (uniform where every norm is 0)."""
    m = norms.shape[0]
    total = float(norms.sum())
    share = norms / total if total > 0 else np.full(m, 1.0 / m)
    q = rate_floor / m + (1.0 - rate_floor) * share
    return inclusion_probabilities(q, np.zeros(m, dtype=np.int64),
                                   np.array([kept], dtype=np.int64))


def choose_budget(
    features: np.ndarray,  # float (M_all, D): every chunk's gradient sketch
    include: np.ndarray,  # bool (M_all,): chunks of informative trajectories
    group_of_chunk: np.ndarray,  # int64 (M_all,)
    signal: float,  # S, >= 0
    *,
    target: float,  # e*: the share of the full batch's progress to keep, in (0, 1)
    min_fraction: float,  # f_min
    rate_floor: float,  # rho
    fixed_fraction: float | None = None,  # keep round(f M) chunks instead of choosing
    fallback_fraction: float,  # used with fewer than two informative groups
) -> Budget:
    """The least K with e(pi(K)) >= target (bisection: N_samp falls as K grows), and its pi."""
    m = int(include.sum())
    pi_all = np.zeros(include.shape[0], dtype=np.float64)
    if m == 0:
        return Budget(pi_all, 0, 0, signal, 0.0, 0.0, 1.0)
    x = features[include].astype(np.float64)
    sq = np.einsum("md,md->m", x, x)  # (M,)
    norms = np.sqrt(sq)
    noise, _ = batch_noise(features, group_of_chunk, include)

    def probs(k: int) -> np.ndarray:
        return neyman_probabilities(norms, k, rate_floor)

    def at_least(fraction: float) -> int:
        return min(m, max(1, math.ceil(fraction * m - 1e-9)))

    if fixed_fraction is not None or math.isnan(noise):
        fraction = fallback_fraction if fixed_fraction is None else fixed_fraction
        k = min(m, max(1, int(np.rint(fraction * m))))
        pi = probs(k)
    else:
        allowed = (1.0 / target - 1.0) * (signal + noise)  # N_samp <= allowed
        lo, hi = at_least(min_fraction), m
        pi = probs(lo)
        if sampling_noise(pi, sq) > allowed:
            while hi - lo > 1:  # invariant: lo fails, hi meets the target (K = M adds none)
                mid = (lo + hi) // 2
                if sampling_noise(probs(mid), sq) <= allowed:
                    hi = mid
                else:
                    lo = mid
            pi = probs(hi)
        k = round(float(pi.sum()))
    n_samp = sampling_noise(pi, sq)
    total = signal + (0.0 if math.isnan(noise) else noise)
    efficiency = total / (total + n_samp) if total + n_samp > 0 else 1.0
    pi_all[include] = pi
    return Budget(pi_all, k, m, signal, noise, n_samp, efficiency)
