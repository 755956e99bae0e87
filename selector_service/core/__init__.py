"""The PCM algorithm (docs/design.md, "The algorithm"): pure NumPy, no I/O, no globals."""

from selector_service.core.batch import ChunkBatch
from selector_service.core.config import RunConfig
from selector_service.core.costs import StepCost, fit_step_cost
from selector_service.core.sampling import budgets, inclusion_probabilities, systematic_sample
from selector_service.core.select import (
    Selection,
    kept_counts,
    random_masks,
    recount_kept,
    request_rng,
    sample_chunks,
    select_chunks,
    select_with_keep_probs,
)
from selector_service.core.state import TaskState
from selector_service.core.variance import informative_trajectories, success_failure_variance
from selector_service.core.weights import keep_weights, phase_keep_weights, update_scores

__all__ = [
    "ChunkBatch",
    "RunConfig",
    "Selection",
    "StepCost",
    "TaskState",
    "budgets",
    "fit_step_cost",
    "inclusion_probabilities",
    "informative_trajectories",
    "keep_weights",
    "kept_counts",
    "phase_keep_weights",
    "random_masks",
    "recount_kept",
    "request_rng",
    "sample_chunks",
    "select_chunks",
    "select_with_keep_probs",
    "success_failure_variance",
    "systematic_sample",
    "update_scores",
]
