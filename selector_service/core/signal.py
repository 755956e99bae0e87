"""Step 2, `signal` score: the learning signal of each phase, from gradient sketches.

Beyond the paper. With score `signal`, a chunk's feature x_ic is a fixed random projection (to
feature_dim) of its advantage-weighted action-head gradient, A_i * d log pi(a_ic | o_ic) / d head,
which the trainer computes from activations cached at rollout time (no backward pass). What a
phase contributes to the *expected* policy gradient is then estimable from inner products of
independent draws, while the success-failure action variance (score `action`) also grows with
noise and with consequences of earlier phases.

Per (task t, phase p), with S_gp = sum of x_ic over the chunks of informative group g in phase p
(a group is one initial state, so groups are independent draws of the same expected sum E S_p):

    cross-group (this batch):  c_tp = sum_{g != h} <S_gp, S_hp> / (G (G - 1)),  G >= 2 groups
    cross-step (state):        r_tp = <R_tp, mean_g S_gp>,  R_tp the EMA of earlier batches'
                               mean_g S_gp (the previous expected gradient)

Both estimate ||E S_p||^2 without the noise term E||S_p - E S_p||^2 that a squared norm has.
v_tp is the mean of those available; it can be negative (noise), and it enters the EMA of step 3
unclipped, so that noise averages out instead of accumulating as a positive bias (clipping each
batch's estimate at 0 gave a directionless, loud phase 0.42 of the keep weight in the planted
test); the keep weights clip the score at 0 (`keep_weights`).
"""

from __future__ import annotations

import numpy as np


def group_phase_sums(
    task_of_chunk: np.ndarray,  # int64 (M,)
    group_of_chunk: np.ndarray,  # int64 (M,): batch-local GRPO group
    phase: np.ndarray,  # int64 (M,)
    features: np.ndarray,  # float (M, D): advantage-weighted gradient sketches x_ic
    include: np.ndarray,  # bool (M,): chunks of informative trajectories
    num_groups: int,
    num_phases: int,
) -> tuple[np.ndarray, np.ndarray]:
    """S (G, P, D) float64: per group and phase, the sum of the included chunks' features; and
    counts (G, P) int64: the included chunks per group and phase."""
    d = features.shape[1]
    cells = num_groups * num_phases
    cell = (group_of_chunk * num_phases + phase)[include]  # (M',)
    order = np.argsort(cell, kind="stable")
    counts = np.bincount(cell, minlength=cells)
    sums = np.zeros((cells, d), dtype=np.float64)
    nonempty = np.flatnonzero(counts)
    if nonempty.size:
        starts = np.r_[0, np.cumsum(counts)[:-1]][nonempty]
        rows = np.flatnonzero(include)[order]  # one gather of the included rows, in cell order
        sums[nonempty] = np.add.reduceat(features[rows].astype(np.float64), starts, axis=0)
    return sums.reshape(num_groups, num_phases, d), counts.reshape(num_groups, num_phases)


def signal_scores(
    task_of_group: np.ndarray,  # int64 (G,): task of each group
    sums: np.ndarray,  # float64 (G, P, D): group phase sums S_gp
    counts: np.ndarray,  # int64 (G, P): included chunks per group and phase
    reference: np.ndarray,  # float64 (T, P, D): R_tp, NaN rows where none yet
    num_tasks: int,
    eta: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """v (T, P) float64 (unclipped), observed (T, P) bool (phases with chunks in the batch), and
    the new reference (T, P, D): `signal_evidence`, then `fold_reference` per task."""
    v, observed, mean, present = signal_evidence(task_of_group, sums, counts, reference,
                                                 num_tasks)
    new_ref = np.stack([fold_reference(reference[t], mean[t], present[t], eta)
                        for t in range(num_tasks)]) if num_tasks else reference.copy()
    return v, observed, new_ref


def signal_evidence(
    task_of_group: np.ndarray,  # int64 (G,): task of each group
    sums: np.ndarray,  # float64 (G, P, D): group phase sums S_gp
    counts: np.ndarray,  # int64 (G, P): included chunks per group and phase
    reference: np.ndarray,  # float64 (T, P, D): R_tp, NaN rows where none yet
    num_tasks: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What one batch says, given the reference it was read with: v (T, P) float64 (unclipped),
    observed (T, P) bool, the mean group phase sums (1/G) sum_g S_gp (T, P, D) and present
    (T, P) bool (phases with chunks of informative groups): the reference's EMA input."""
    num_phases = sums.shape[1]
    included_group = counts.sum(axis=1) > 0  # (G,)
    v = np.zeros((num_tasks, num_phases))
    observed = np.zeros((num_tasks, num_phases), dtype=bool)
    means = np.zeros((num_tasks, num_phases, sums.shape[2]))
    presents = np.zeros((num_tasks, num_phases), dtype=bool)
    for t in range(num_tasks):
        groups = np.flatnonzero((task_of_group == t) & included_group)
        g = len(groups)
        if g == 0:
            continue
        s = sums[groups]  # (g, P, D)
        total = s.sum(axis=0)  # (P, D)
        mean = total / g  # (P, D)
        present = counts[groups].sum(axis=0) > 0  # (P,)
        estimates = np.zeros(num_phases)
        count = np.zeros(num_phases)
        if g >= 2:  # cross-group: (||sum||^2 - sum ||S_g||^2) / (g (g - 1))
            cross = (np.einsum("pd,pd->p", total, total)
                     - np.einsum("gpd,gpd->p", s, s)) / (g * (g - 1))
            estimates += cross
            count += 1
        known = ~np.isnan(reference[t, :, 0]) & present  # (P,) phases with a reference
        if known.any():  # cross-step: <R_tp, mean_g S_gp>
            step = np.einsum("pd,pd->p", np.where(known[:, None], reference[t], 0.0), mean)
            estimates += np.where(known, step, 0.0)
            count += known
        seen = (count > 0) & present
        v[t] = np.where(seen, estimates / np.maximum(count, 1), 0.0)
        observed[t] = seen
        means[t] = mean
        presents[t] = present
    return v, observed, means, presents


def fold_reference(reference: np.ndarray, mean: np.ndarray, present: np.ndarray,
                   eta: float) -> np.ndarray:
    """One task's reference after a batch: R_tp <- (1 - eta) R_tp + eta mean_tp for every
    present phase, the first batch initialising it (reference (P, D), NaN rows where none;
    mean (P, D); present (P,)). Applied to the stored reference when a selection commits
    (core/fold.py), in commit order; the Redis store's Lua fold mirrors it operation for
    operation."""
    known = ~np.isnan(reference[:, 0]) & present  # (P,)
    ema = np.where(known[:, None], (1.0 - eta) * reference + eta * mean, mean)
    return np.where(present[:, None], ema, reference)
