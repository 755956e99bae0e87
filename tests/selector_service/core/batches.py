"""Builders of synthetic rollout batches for the core tests."""

from __future__ import annotations

import numpy as np

from selector_service.core import ChunkBatch, RunConfig


def make_batch(
    lengths: list[int],
    success: list[bool],
    group_ids: list[str],
    phases: list[np.ndarray],
    features: list[np.ndarray],
    config: RunConfig,
    task_ids: list[str] | None = None,
) -> ChunkBatch:
    return ChunkBatch.from_trajectories(
        task_ids or ["task"] * len(lengths), group_ids, np.asarray(success, dtype=bool),
        phases, features, config.phases, config.feature_dim)


def contiguous_phases(length: int, num_phases: int) -> np.ndarray:
    """Phase of each chunk by its position in the trajectory (the `progress` segmenter)."""
    return np.minimum(np.arange(length) * num_phases // length, num_phases - 1)


def diverging_batch(rng: np.random.Generator, config: RunConfig, diverging_phase: int = 2,
                    groups: int = 4, group_size: int = 8, chunks: int = 16,
                    noise: float = 0.1) -> ChunkBatch:
    """Successful and failed rollouts differ only in `diverging_phase`; every other phase draws
    its actions from one distribution plus noise."""
    n = groups * group_size
    success = np.zeros(n, dtype=bool)
    for g in range(groups):  # 1 to G-1 successes per group: every group is informative
        wins = rng.choice(group_size, size=int(rng.integers(1, group_size)), replace=False)
        success[g * group_size + wins] = True
    phases = [contiguous_phases(chunks, config.phases) for _ in range(n)]
    features = []
    for i in range(n):
        x = rng.normal(0.0, noise, size=(chunks, config.feature_dim))
        in_phase = phases[i] == diverging_phase
        x[in_phase] += 1.0 if success[i] else -1.0
        features.append(x)
    return make_batch([chunks] * n, list(success), [f"g{i // group_size}" for i in range(n)],
                      phases, features, config)
