"""PCM chunk selection for one batch: the whole algorithm of DESIGN.md section 3, top to bottom.

Pure: takes the run config, the batch and the current state of the batch's tasks, returns masks,
weights and the new task states. No I/O; the caller stores the new states atomically.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from selector_service.core.batch import ChunkBatch
from selector_service.core.config import RunConfig, check_keep_fraction
from selector_service.core.sampling import budgets, inclusion_probabilities, systematic_sample
from selector_service.core.state import TaskState
from selector_service.core.variance import informative_trajectories, success_failure_variance
from selector_service.core.weights import keep_weights, update_scores


@dataclass(frozen=True)
class Selection:
    mask: np.ndarray  # bool (M,): chunk kept for backward
    weight: np.ndarray  # float64 (M,): loss weight, 0 off the mask
    inclusion: np.ndarray  # float64 (M,): pi_ic, 0 for skipped trajectories
    informative: np.ndarray  # bool (N,)
    keep_probs: dict[str, np.ndarray]  # task_id -> (P,) phase keep weights w_tp used
    new_states: dict[str, TaskState]  # task_id -> state after this batch
    kept_chunks: int
    total_chunks: int
    skipped_trajectories: int


def request_rng(seed: int, request_id: str) -> np.random.Generator:
    """The selection's random stream: a function of (run seed, request_id) only."""
    digest = hashlib.blake2b(request_id.encode("utf-8"), digest_size=16).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([seed, *words]))


def select_chunks(
    config: RunConfig,
    batch: ChunkBatch,
    states: Mapping[str, TaskState],
    request_id: str,
    keep_fraction: float | None = None,
) -> Selection:
    num_phases = config.phases
    num_tasks = len(batch.task_ids)
    f = config.keep_fraction if keep_fraction is None else check_keep_fraction(keep_fraction)
    if config.mode == "grpo":
        f = 1.0
    rng = request_rng(config.seed, request_id)

    task_of_chunk = batch.task_index[batch.traj_of_chunk]  # (M,)
    prior = np.stack([_state_for(states, t, num_phases).scores for t in batch.task_ids])  # (T, P)

    # 1. Informative trajectories: groups with both outcomes. The rest keep nothing.
    informative = informative_trajectories(batch.group_index, batch.success)  # (N,)
    informative_chunk = informative[batch.traj_of_chunk]  # (M,)

    # 2. Success-failure action variance per (task, phase), from the informative chunks.
    v, observed = success_failure_variance(
        task_of_chunk, batch.phase, batch.success[batch.traj_of_chunk], batch.features,
        informative_chunk, num_tasks, num_phases)  # (T, P), (T, P)

    # 3. Online phase scores (EMA) and phase keep weights w_tp.
    scores = update_scores(prior, v, observed, config.eta)  # (T, P)
    w = keep_weights(scores, config.eps)  # (T, P), rows sum to 1

    # 4-5. Fixed-budget sampling with the phase keep weights, and the loss weights.
    mask, weight, pi = sample_chunks(config, batch, w, informative, rng, f)

    new_states = _next_states(batch, states, scores, observed, mask, informative, num_phases)
    return Selection(
        mask=mask,
        weight=weight,
        inclusion=pi,
        informative=informative,
        keep_probs={t: w[j] for j, t in enumerate(batch.task_ids)},
        new_states=new_states,
        kept_chunks=int(mask.sum()),
        total_chunks=batch.num_chunks,
        skipped_trajectories=int((~informative).sum()),
    )


def sample_chunks(
    config: RunConfig,
    batch: ChunkBatch,
    w: np.ndarray,  # (T, P) phase keep weights, rows sum to 1, rows in batch.task_ids order
    informative: np.ndarray,  # bool (N,)
    rng: np.random.Generator,
    f: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 4-5: mask (M,) bool, weight (M,) float64 and inclusion probabilities pi (M,)."""
    num_phases = config.phases
    task_of_chunk = batch.task_index[batch.traj_of_chunk]  # (M,)
    informative_chunk = informative[batch.traj_of_chunk]  # (M,)
    # 4. Fixed-budget sampling: k_i chunks per informative trajectory, chunk weights
    #    q_ic = w_{t_i, phi_ic} / n_i(phi_ic) (the phase's weight shared among its chunks).
    k = np.where(informative, budgets(batch.lengths, f), 0)  # (N,)
    if config.mode == "pcm":
        n = batch.num_trajectories
        cell = batch.traj_of_chunk * num_phases + batch.phase  # (M,)
        n_in_phase = np.bincount(cell, minlength=n * num_phases)[cell]  # n_i(phi_ic), (M,)
        q = w[task_of_chunk, batch.phase] / n_in_phase
    elif config.mode in ("random", "grpo"):
        q = np.ones(batch.num_chunks)  # uniform over a trajectory's chunks, blind to phases
    else:
        raise ValueError(f"unknown mode {config.mode!r}")
    pi = inclusion_probabilities(q, batch.traj_of_chunk, k)  # (M,), sums to k_i per trajectory
    mask = systematic_sample(pi, batch.traj_of_chunk, k, rng) & informative_chunk

    # 5. Weights: Horvitz-Thompson 1 / pi (unbiased for the full GRPO loss), or 1.
    if config.weighting == "ht":
        weight = np.zeros(batch.num_chunks)
        np.divide(1.0, pi, out=weight, where=mask)
    elif config.weighting == "none":
        weight = mask.astype(np.float64)
    else:
        raise ValueError(f"unknown weighting {config.weighting!r}")
    return mask, weight, pi


def select_with_keep_probs(
    config: RunConfig,
    batch: ChunkBatch,
    keep_probs: Mapping[str, np.ndarray | list[float]],
    request_id: str,
    keep_fraction: float | None = None,
) -> Selection:
    """Steps 1, 4 and 5 with given phase keep weights and no state update: how a client selects
    locally while the selector is unreachable (tasks without weights sample uniformly)."""
    num_phases = config.phases
    f = config.keep_fraction if keep_fraction is None else check_keep_fraction(keep_fraction)
    if config.mode == "grpo":
        f = 1.0
    uniform = np.full(num_phases, 1.0 / num_phases)
    w = np.stack([np.asarray(keep_probs.get(t, uniform), dtype=np.float64)
                  for t in batch.task_ids])  # (T, P)
    if w.shape[1] != num_phases:
        raise ValueError(f"keep_probs have {w.shape[1]} phases, the run has {num_phases}")
    informative = informative_trajectories(batch.group_index, batch.success)  # (N,)
    rng = request_rng(config.seed, request_id)
    mask, weight, pi = sample_chunks(config, batch, w, informative, rng, f)
    return Selection(
        mask=mask, weight=weight, inclusion=pi, informative=informative,
        keep_probs={t: w[j] for j, t in enumerate(batch.task_ids)}, new_states={},
        kept_chunks=int(mask.sum()), total_chunks=batch.num_chunks,
        skipped_trajectories=int((~informative).sum()))


def _state_for(states: Mapping[str, TaskState], task_id: str, num_phases: int) -> TaskState:
    state = states.get(task_id)
    if state is None:
        return TaskState.empty(num_phases)
    if state.num_phases != num_phases:
        raise ValueError(f"stored state of task {task_id!r} has {state.num_phases} phases, "
                         f"the run has {num_phases}")
    return state


def _next_states(
    batch: ChunkBatch,
    states: Mapping[str, TaskState],
    scores: np.ndarray,  # (T, P)
    observed: np.ndarray,  # (T, P)
    mask: np.ndarray,  # (M,)
    informative: np.ndarray,  # (N,)
    num_phases: int,
) -> dict[str, TaskState]:
    num_tasks = len(batch.task_ids)
    task_of_chunk = batch.task_index[batch.traj_of_chunk]
    cell = task_of_chunk * num_phases + batch.phase
    total = np.bincount(cell, minlength=num_tasks * num_phases).reshape(num_tasks, num_phases)
    kept = np.bincount(cell, weights=mask, minlength=num_tasks * num_phases)
    kept = kept.astype(np.int64).reshape(num_tasks, num_phases)
    trajs = np.bincount(batch.task_index, minlength=num_tasks)
    skipped = np.bincount(batch.task_index, weights=~informative, minlength=num_tasks)
    out = {}
    for j, task_id in enumerate(batch.task_ids):
        prev = _state_for(states, task_id, num_phases)
        out[task_id] = replace(
            prev,
            scores=scores[j].copy(),
            observations=prev.observations + observed[j],
            chunks_total=prev.chunks_total + total[j],
            chunks_kept=prev.chunks_kept + kept[j],
            trajectories=prev.trajectories + int(trajs[j]),
            skipped_trajectories=prev.skipped_trajectories + int(skipped[j]),
            version=prev.version + 1,
        )
    return out

