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

Phase weighting `wiener` (biased): chunk c of cell (task t, phase p) is also weighted by
alpha_tp = max(eps, S_tp / (S_tp + N_tp)), with S_tp = G_t^2 max(s_tp, 0) the cell's signal and
N_tp its noise (the spread of its groups' phase sums). With the cells' expected gradients
orthogonal, the update g_a = sum_c alpha_c x_c / pi_c [c kept] makes progress proportional to
(sum alpha S)^2 / (sum alpha^2 (S + N) + N_samp,a), N_samp,a = sum_c alpha_c^2 (1 / pi_c - 1)
||x_c||^2, and alpha = S / (S + N) maximises it (each cell's Wiener factor). Its share of the
full batch's progress S^2 / (S + N),

    e_a(pi) = (sum alpha S)^2 / (sum alpha^2 (S + N) + N_samp,a) * (S + N) / S^2,

can exceed 1: damping noise-only phases removes more noise than signal. pi is then Neyman on
alpha_c ||x_c||, and the rule keeps the fewest chunks with e_a >= target.

Objective `rate`: given the trainer's step time t(K) = t_0 + c K (core/costs.py), the rule keeps
instead the K in [f_min M, M] that maximises the predicted progress per second e(K) / t(K);
its value relative to keeping every chunk (with the same weights), e(K) t(M) / (e(M) t(K)) >=
1, is the budget's `rate`. Where the update is a small part of the step or the noise
dominates, that is K = M: the full batch. With e = K / (K + b M) (uniform draws, noise b M
in chunks) and r = t_0 / t(M) the optimum is K / M = sqrt(b r / (1 - r)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from selector_service.core.costs import StepCost
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
    alpha: np.ndarray | None = None  # float64 (M,): phase weighting wiener's factor per chunk
    rate: float | None = None  # objective rate: e(K) t(M) / (e(M) t(K)), per second vs all

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


@dataclass(frozen=True)
class PhaseWeighting:
    """Phase weighting `wiener`'s inputs: per cell (task, phase) its signal S and noise N in
    the batch-sum scale, the factor alpha, and each chunk's cell."""

    signal: np.ndarray  # float64 (C,): S_tp = G_t^2 max(s_tp, 0)
    noise: np.ndarray  # float64 (C,): N_tp
    alpha: np.ndarray  # float64 (C,): max(eps, S / (S + N))
    cell_of_chunk: np.ndarray  # int64 (M_all,)


def wiener_weighting(
    scores: np.ndarray,  # (T, P): the run's phase scores s_tp (`signal`: ||E S_tp||^2)
    sums: np.ndarray,  # float64 (G, P, D): the batch's group phase sums S_gp
    task_of_group: np.ndarray,  # int64 (G,)
    informative_groups: np.ndarray,  # int64: the groups with both outcomes
    cell_of_chunk: np.ndarray,  # int64 (M_all,): task * P + phase
    floor: float,  # the least alpha
) -> PhaseWeighting | None:
    """alpha_tp = max(floor, S_tp / (S_tp + N_tp)), N_tp = G_t / (G_t - 1) sum_g ||S_gp -
    mean_g S_gp||^2 over task t's informative groups; None (no weighting) while no cell has
    signal or a task with signal has fewer than two informative groups."""
    num_tasks, num_phases = scores.shape
    signal = np.zeros((num_tasks, num_phases))
    noise = np.zeros((num_tasks, num_phases))
    s = np.maximum(np.nan_to_num(scores, nan=0.0), 0.0)  # (T, P)
    for t in range(num_tasks):
        groups = informative_groups[task_of_group[informative_groups] == t]
        g = groups.shape[0]
        if g < 2:
            if s[t].any():
                return None
            continue
        spread = sums[groups] - sums[groups].mean(axis=0)  # (G_t, P, D)
        noise[t] = g / (g - 1) * np.einsum("gpd,gpd->p", spread, spread)
        signal[t] = g * g * s[t]
    if not signal.any():
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(signal + noise > 0, signal / (signal + noise), 0.0)
    alpha = np.maximum(floor, ratio)
    return PhaseWeighting(signal.reshape(-1), noise.reshape(-1), alpha.reshape(-1),
                          cell_of_chunk)


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
    weighting: PhaseWeighting | None = None,  # phase weighting wiener
    cost: StepCost | None = None,  # objective rate: the trainer's step time t(K)
) -> Budget:
    """The least K with e(pi(K)) >= target (bisection: N_samp falls as K grows), and its pi;
    with a step cost, the K that maximises e(pi(K)) / t(K)."""
    m = int(include.sum())
    pi_all = np.zeros(include.shape[0], dtype=np.float64)
    if m == 0:
        return Budget(pi_all, 0, 0, signal, 0.0, 0.0, 1.0)
    x = features[include].astype(np.float64)
    sq = np.einsum("md,md->m", x, x)  # (M,)
    norms = np.sqrt(sq)
    noise, _ = batch_noise(features, group_of_chunk, include)
    a = np.ones(m) if weighting is None else weighting.alpha[weighting.cell_of_chunk[include]]
    a_sq = a * a * sq  # (M,): alpha_c^2 ||x_c||^2

    def probs(k: int) -> np.ndarray:
        return neyman_probabilities(a * norms, k, rate_floor)

    total = signal + (0.0 if math.isnan(noise) else noise)
    gain = base = full = 0.0  # phase weighting: (sum alpha S)^2, sum alpha^2 (S + N), S^2/(S+N)
    if weighting is not None and not math.isnan(noise) and signal > 0:
        gain = float(np.dot(weighting.alpha, weighting.signal)) ** 2
        base = float(np.dot(weighting.alpha ** 2, weighting.signal + weighting.noise))
        full = signal * signal / total

    def efficiency(n_samp: float) -> float:
        if full > 0:
            return gain / (base + n_samp) / full if base + n_samp > 0 else 1.0
        return total / (total + n_samp) if total + n_samp > 0 else 1.0

    def at_least(fraction: float) -> int:
        return min(m, max(1, math.ceil(fraction * m - 1e-9)))

    if fixed_fraction is not None or math.isnan(noise):
        fraction = fallback_fraction if fixed_fraction is None else fixed_fraction
        k = min(m, max(1, int(np.rint(fraction * m))))
        pi = probs(k)
    elif cost is not None:
        seconds = cost.seconds
        k = best_rate(lambda k: efficiency(sampling_noise(probs(k), a_sq)) / seconds(k),
                      at_least(min_fraction), m)
        pi = probs(k)
    else:
        # N_samp <= allowed  <=>  e >= target
        allowed = (gain / (target * full) - base if full > 0
                   else (1.0 / target - 1.0) * (signal + noise))
        lo, hi = at_least(min_fraction), m
        pi = probs(lo)
        if sampling_noise(pi, a_sq) > allowed:
            while hi - lo > 1:  # invariant: lo fails, hi meets the target (K = M adds none)
                mid = (lo + hi) // 2
                if sampling_noise(probs(mid), a_sq) <= allowed:
                    hi = mid
                else:
                    lo = mid
            pi = probs(hi)
        k = round(float(pi.sum()))
    n_samp = sampling_noise(pi, a_sq)
    pi_all[include] = pi
    alpha_all = None
    if weighting is not None:
        alpha_all = np.zeros(include.shape[0], dtype=np.float64)
        alpha_all[include] = a
    e = efficiency(n_samp)
    rate = None
    if cost is not None and fixed_fraction is None and not math.isnan(noise):
        # against every chunk kept with the same phase weights (e(M): N_samp = 0), so that a
        # weighting's own gain, which can put e far above 1 where S is small, is not counted
        rate = e / efficiency(0.0) * cost.seconds(m) / cost.seconds(k)
    return Budget(pi_all, k, m, signal, noise, n_samp, e, alpha_all, rate)


def best_rate(rate: Callable[[int], float], lo: int, hi: int, grid: int = 16) -> int:
    """The K in [lo, hi] with the largest rate(K): the best of a geometric grid, then a ternary
    search between its neighbours (rate is unimodal in K: e(K) rises and flattens, t(K) is
    linear). Ties go to the larger K (more progress per step for the same rate)."""
    ks = sorted({lo, hi, *np.rint(np.geomspace(lo, hi, grid)).astype(int).tolist()})
    values = [rate(k) for k in ks]
    i = max(range(len(ks)), key=lambda j: (values[j], ks[j]))
    a, b = ks[max(i - 1, 0)], ks[min(i + 1, len(ks) - 1)]
    seen = dict(zip(ks, values, strict=True))

    def at(k: int) -> float:
        if k not in seen:
            seen[k] = rate(k)
        return seen[k]

    while b - a > 2:
        m1, m2 = a + (b - a) // 3, b - (b - a) // 3
        if at(m1) > at(m2):
            b = m2
        else:
            a = m1
    return max(range(a, b + 1), key=lambda k: (at(k), k))
