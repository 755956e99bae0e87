"""Batch updates (core/fold.py) for store tests: random ones, and ones that only count."""

from __future__ import annotations

import numpy as np

from selector_service.core.fold import StateUpdate, TaskUpdate

ETA = 0.1


def task_update(seed: int, phases: int = 4, dim: int | None = None) -> TaskUpdate:
    """A batch's random contribution to one task (with reference input when `dim`)."""
    rng = np.random.default_rng(seed)
    present = rng.random(phases) < 0.8
    return TaskUpdate(
        evidence=rng.normal(size=phases), observed=present & (rng.random(phases) < 0.8),
        chunks_total=rng.integers(1, 99, phases), chunks_kept=rng.integers(0, 9, phases),
        trajectories=int(rng.integers(1, 50)), skipped_trajectories=int(rng.integers(0, 3)),
        group_mean=None if dim is None else rng.normal(size=(phases, dim)),
        present=None if dim is None else present)


def state_update(tasks: dict[str, TaskUpdate], phases: int = 4,
                 bias_corrected: bool = False) -> StateUpdate:
    return StateUpdate(eta=ETA, bias_corrected=bias_corrected, num_phases=phases, tasks=tasks)


def counting_update(task_ids: list[str], phases: int = 4) -> StateUpdate:
    """A batch that observed nothing: one trajectory and one chunk per task and phase."""
    ones = np.ones(phases, dtype=np.int64)
    return state_update({t: TaskUpdate(evidence=np.zeros(phases),
                                       observed=np.zeros(phases, dtype=bool),
                                       chunks_total=ones, chunks_kept=0 * ones,
                                       trajectories=1, skipped_trajectories=0)
                         for t in task_ids}, phases)
