"""Steps 1-2 of PCM: informative trajectories and success-failure action variance.

Paper: "Learn Where Outcomes Diverge: Efficient VLA RL via Probabilistic Chunk Masking"
(arXiv 2605.16154); docs/design.md, "Selection, step by step".
"""

from __future__ import annotations

import numpy as np


def informative_trajectories(group_index: np.ndarray, success: np.ndarray) -> np.ndarray:
    """bool (N,): trajectories whose GRPO group has both outcomes (non-zero advantage).

    A group whose outcomes are all equal has advantage 0 for every chunk, so it is skipped.
    """
    num_groups = int(group_index.max()) + 1
    group_size = np.bincount(group_index, minlength=num_groups)
    group_wins = np.bincount(group_index, weights=success, minlength=num_groups)
    mixed = (group_wins > 0) & (group_wins < group_size)  # (G,)
    return mixed[group_index]


# Above this many (task, phase, outcome) cells the one-hot product costs more than sorting.
_MATMUL_MAX_CELLS = 64


def success_failure_variance(
    task_of_chunk: np.ndarray,  # int64 (M,)
    phase: np.ndarray,  # int64 (M,)
    success_of_chunk: np.ndarray,  # bool (M,)
    features: np.ndarray,  # float (M, D)
    include: np.ndarray,  # bool (M,): chunks that count (those of informative trajectories)
    num_tasks: int,
    num_phases: int,
) -> tuple[np.ndarray, np.ndarray]:
    """v (T, P) float64 and observed (T, P) bool, from the included chunks.

    v_tp = n_S n_F / (n_S + n_F)^2 * ||mean(S) - mean(F)||^2, with S and F the features of
    successful and failed rollouts' chunks of task t in phase p; observed where both exist.
    """
    cells = num_tasks * num_phases
    # Segment id per chunk: (task, phase, outcome), and one spare segment for excluded chunks.
    key = np.where(include, (task_of_chunk * num_phases + phase) * 2 + success_of_chunk,
                   2 * cells)  # (M,) in [0, 2 * cells]
    counts = np.bincount(key, minlength=2 * cells + 1)[:-1].reshape(cells, 2)
    sums = _segment_sums(key, features, 2 * cells + 1)[:-1].reshape(cells, 2, -1)
    n_f, n_s = counts[:, 0].astype(np.float64), counts[:, 1].astype(np.float64)
    observed = (n_f > 0) & (n_s > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_f = sums[:, 0] / n_f[:, None]
        mean_s = sums[:, 1] / n_s[:, None]
        balance = n_s * n_f / (n_s + n_f) ** 2
    v = np.where(observed, balance * np.sum((mean_s - mean_f) ** 2, axis=1), 0.0)
    return v.reshape(num_tasks, num_phases), observed.reshape(num_tasks, num_phases)


def _segment_sums(key: np.ndarray, features: np.ndarray, num_segments: int) -> np.ndarray:
    """(num_segments, D) float64: sum of the feature rows of each segment id."""
    if num_segments <= _MATMUL_MAX_CELLS * 2 + 1:
        # One-hot (S, M) @ (M, D): a single BLAS call, far faster than a scatter-add. The
        # batch's features are float32 whatever the transport (ChunkBatch makes them so), so
        # embedded, gRPC and HTTP selections compute the same sums.
        one_hot = np.zeros((num_segments, key.shape[0]), dtype=features.dtype)
        one_hot[key, np.arange(key.shape[0])] = 1.0
        return (one_hot @ features).astype(np.float64)
    sums = np.zeros((num_segments, features.shape[1]), dtype=np.float64)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    sums[sorted_key[starts]] = np.add.reduceat(features[order].astype(np.float64), starts, axis=0)
    return sums
