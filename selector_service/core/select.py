"""PCM chunk selection for one batch, the whole algorithm top to bottom (docs/design.md,
"Selection, step by step").

Pure: takes the run config, the batch and the current state of the batch's tasks, returns masks,
weights and the new task states. No I/O; the caller stores the new states atomically.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from selector_service.core.batch import ChunkBatch
from selector_service.core.budget import Budget, choose_budget, wiener_weighting
from selector_service.core.config import RunConfig, check_keep_fraction
from selector_service.core.costs import StepCost
from selector_service.core.fold import StateUpdate, batch_update, fold_scores, fold_states
from selector_service.core.sampling import (
    budgets,
    inclusion_probabilities,
    successive_sample,
    systematic_sample,
)
from selector_service.core.signal import group_phase_sums, signal_evidence
from selector_service.core.state import TaskState
from selector_service.core.variance import informative_trajectories, success_failure_variance
from selector_service.core.weights import phase_keep_weights, update_scores


@dataclass(frozen=True)
class Selection:
    mask: np.ndarray  # bool (M,): chunk kept for backward
    weight: np.ndarray  # float64 (M,): loss weight, 0 off the mask
    inclusion: np.ndarray  # float64 (M,): pi_ic, 0 for skipped trajectories
    informative: np.ndarray  # bool (N,)
    keep_probs: dict[str, np.ndarray]  # task_id -> (P,) phase keep weights w_tp used
    new_states: dict[str, TaskState]  # task_id -> state after this batch, on the given states
    kept_chunks: int
    total_chunks: int
    skipped_trajectories: int
    budget: Budget | None = None  # budget_rule auto: the chosen budget and its prediction
    # what the batch changes in its tasks' states, to fold into the state stored at commit
    update: StateUpdate | None = None


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
    cost: StepCost | None = None,
) -> Selection:
    """`cost`: the trainer's step time (core/costs.py), used by budget_objective rate; None
    until its reports identify it (the budget then keeps target_efficiency)."""
    num_phases = config.phases
    num_tasks = len(batch.task_ids)
    f = _fraction(config, keep_fraction)
    rng = request_rng(config.seed, request_id)

    task_of_chunk = batch.task_index[batch.traj_of_chunk]  # (M,)
    prior = np.stack([_state_for(states, t, num_phases).scores for t in batch.task_ids])  # (T, P)

    # 1. Informative trajectories: groups with both outcomes. The rest keep nothing.
    informative = informative_trajectories(batch.group_index, batch.success)  # (N,)
    informative_chunk = informative[batch.traj_of_chunk]  # (M,)

    # 2. Phase scores from the informative chunks: the success-failure action variance
    #    (`action`, the paper's) or the learning signal of the gradient sketches (`signal`).
    group_mean = present = sums = None
    if config.score == "action":
        v, observed = success_failure_variance(
            task_of_chunk, batch.phase, batch.success[batch.traj_of_chunk], batch.features,
            informative_chunk, num_tasks, num_phases)  # (T, P), (T, P)
    elif config.score == "signal":
        num_groups = int(batch.group_index.max()) + 1
        group_of_chunk = batch.group_index[batch.traj_of_chunk]  # (M,)
        task_of_group = np.zeros(num_groups, dtype=np.int64)
        task_of_group[batch.group_index] = batch.task_index  # a group belongs to one task
        sums, phase_counts = group_phase_sums(task_of_chunk, group_of_chunk, batch.phase,
                                        batch.features, informative_chunk, num_groups,
                                        num_phases)  # (G, P, D), (G, P)
        reference = np.stack([_signal_ref_for(states, t, num_phases, config.feature_dim)
                              for t in batch.task_ids])  # (T, P, D)
        v, observed, group_mean, present = signal_evidence(task_of_group, sums, phase_counts,
                                                           reference, num_tasks)
    else:
        raise ValueError(f"unknown score {config.score!r}")

    # 3. Online phase scores (EMA, bias-corrected for `signal`; or the paper's window, refreshed
    #    every score_window batches and held in between) and phase keep weights w_tp.
    if config.score_window == 0:
        counts: np.ndarray | None = None
        if config.score == "signal":
            counts = np.stack([_state_for(states, t, num_phases).observations
                               for t in batch.task_ids])  # (T, P)
        scores = update_scores(prior, v, observed, config.eta, counts)  # (T, P)
    else:
        scores = np.stack([
            fold_scores(_state_for(states, t, num_phases), v[j], observed[j], config.eta,
                        config.score == "signal", config.score_window)[0]
            for j, t in enumerate(batch.task_ids)])  # (T, P)
    w = phase_keep_weights(config.keep_rule, scores, config.eps)  # (T, P)

    # 4-5. The chunks to keep and their loss weights: budget_rule auto chooses how many and
    #      which from the chunks' gradient sketches (core/budget.py); fixed samples the fixed
    #      budget with the phase keep weights.
    budget = None
    if config.budget_rule == "auto" and config.mode != "grpo":
        budget = auto_budget(config, batch, informative, scores, keep_fraction, sums,
                             cost if config.budget_objective == "rate" else None)
        mask, weight, pi = sample_budget(config, batch, budget, rng)
        w = phase_shares(batch, pi, num_phases)
    elif config.budget_rule in ("auto", "fixed"):
        mask, weight, pi = sample_chunks(config, batch, w, informative, rng, f)
    else:
        raise ValueError(f"unknown budget_rule {config.budget_rule!r}")

    update = batch_update(batch, v, observed, mask, informative, num_phases, config.eta,
                          config.score == "signal", group_mean, present, config.score_window)
    new_states = fold_states(states, update)
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
        budget=budget,
        update=update,
    )


def auto_budget(
    config: RunConfig,
    batch: ChunkBatch,
    informative: np.ndarray,  # bool (N,)
    scores: np.ndarray,  # (T, P): the phase scores after this batch (`signal`: ||E S_tp||^2)
    keep_fraction: float | None,  # a request's override: keep round(f M), still by the rule's pi
    sums: np.ndarray | None = None,  # (G, P, D): group phase sums (phase weighting wiener)
    cost: StepCost | None = None,  # objective rate: the trainer's step time
) -> Budget:
    """The auto budget's inclusion probabilities (core/budget.py). S = sum_t G_t^2 sum_p
    max(s_tp, 0), G_t the task's informative groups; random mode draws uniformly (rho = 1)."""
    informative_chunk = informative[batch.traj_of_chunk]  # (M,)
    group_of_chunk = batch.group_index[batch.traj_of_chunk]  # (M,)
    task_of_group = np.zeros(int(batch.group_index.max()) + 1, dtype=np.int64)
    task_of_group[batch.group_index] = batch.task_index  # a group belongs to one task
    groups = np.unique(batch.group_index[informative])
    groups_per_task = np.bincount(task_of_group[groups], minlength=len(batch.task_ids))
    phase_signal = np.maximum(np.nan_to_num(scores, nan=0.0), 0.0).sum(axis=1)  # (T,)
    signal = float(np.sum(groups_per_task ** 2 * phase_signal))
    weighting = None
    if config.phase_weighting == "wiener" and config.mode == "pcm" and sums is not None:
        cell_of_chunk = batch.task_index[batch.traj_of_chunk] * config.phases + batch.phase
        weighting = wiener_weighting(scores, sums, task_of_group, groups, cell_of_chunk,
                                     config.eps)
    elif config.phase_weighting not in ("none", "wiener"):
        raise ValueError(f"unknown phase_weighting {config.phase_weighting!r}")
    return choose_budget(
        batch.features, informative_chunk, group_of_chunk, signal,
        target=config.target_efficiency, min_fraction=config.min_keep_fraction,
        rate_floor=1.0 if config.mode == "random" else config.rate_floor,
        fixed_fraction=None if keep_fraction is None else check_keep_fraction(keep_fraction),
        fallback_fraction=config.keep_fraction, weighting=weighting, cost=cost)


def sample_budget(config: RunConfig, batch: ChunkBatch, budget: Budget,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The auto budget's draw: exactly K chunks over the whole batch (randomised systematic
    sampling on one line), chunk c kept with probability pi_c; mask (M,), weight (M,), pi (M,)."""
    pi = budget.pi
    on = pi > 0
    mask = np.zeros(batch.num_chunks, dtype=bool)
    if budget.kept:
        line = np.zeros(int(on.sum()), dtype=np.int64)
        mask[on] = systematic_sample(pi[on], line, np.array([budget.kept]), rng)
    weight = loss_weights(config.weighting, mask, pi)
    if budget.alpha is not None:  # phase weighting wiener: each phase's factor on top
        weight = weight * budget.alpha
    return mask, weight, pi


def loss_weights(weighting: str, mask: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """Step 5: the loss weight of every chunk (M,), 0 off the mask."""
    if weighting == "ht":
        weight = np.zeros(mask.shape[0])
        np.divide(1.0, pi, out=weight, where=mask)
        return weight
    elif weighting in ("mean", "none"):
        return mask.astype(np.float64)
    else:
        raise ValueError(f"unknown weighting {weighting!r}")


def phase_shares(batch: ChunkBatch, pi: np.ndarray, num_phases: int) -> np.ndarray:
    """(T, P): each task's expected kept chunks per phase over its total, the keep weights an
    auto budget used (uniform for a task that keeps nothing)."""
    num_tasks = len(batch.task_ids)
    cell = batch.task_index[batch.traj_of_chunk] * num_phases + batch.phase
    mass = np.bincount(cell, weights=pi, minlength=num_tasks * num_phases)
    mass = mass.reshape(num_tasks, num_phases)
    total = mass.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, mass / total, 1.0 / num_phases)


def sample_chunks(
    config: RunConfig,
    batch: ChunkBatch,
    w: np.ndarray,  # (T, P) phase keep weights (keep_rule share: rows sum to 1; paper: p_tp),
    #                 rows in batch.task_ids order
    informative: np.ndarray,  # bool (N,)
    rng: np.random.Generator,
    f: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 4-5: mask (M,) bool, weight (M,) float64 and inclusion probabilities pi (M,).
    f: the keep fraction, or None for the run's fixed budget B chunks per trajectory."""
    num_phases = config.phases
    task_of_chunk = batch.task_index[batch.traj_of_chunk]  # (M,)
    informative_chunk = informative[batch.traj_of_chunk]  # (M,)
    # 4. Fixed-budget sampling: k_i chunks per informative trajectory, chunk weights
    #    q_ic = w_{t_i, phi_ic} / n_i(phi_ic) (the phase's weight shared among its chunks).
    # (N,): the fixed budget B, or round(f C_i)
    k_all = np.minimum(config.budget, batch.lengths) if f is None else budgets(batch.lengths, f)
    k = np.where(informative, k_all, 0)  # (N,)
    if config.mode == "pcm" and config.keep_rule == "paper":
        # The paper's draw (arXiv 2605.16154, Sec. 4.4-4.5): every chunk weighted by its
        # phase's keep probability p_tp, k_i of them by weighted sampling without replacement.
        q = w[task_of_chunk, batch.phase]
        pi = inclusion_probabilities(q, batch.traj_of_chunk, k)  # (M,), approximate
        mask = successive_sample(q, batch.traj_of_chunk, k, rng) & informative_chunk
        return mask, loss_weights(config.weighting, mask, pi), pi
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

    # 5. Weights: 1 on kept chunks (`mean`: the trainer averages the loss over them, the
    #    paper's estimator; `none`: it divides by the full loss's count), or Horvitz-Thompson
    #    1 / pi (`ht`: unbiased for the full GRPO loss).
    return mask, loss_weights(config.weighting, mask, pi), pi


def random_masks(
    lengths: np.ndarray | list[int],  # int (N,): C_i, the chunks of each trajectory
    keep_fraction: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `random` mode's draw (`sample_chunks` with mode random and the budget round(f C_i))
    for trajectories that all count as informative: k_i = clamp(round(f C_i), 1, C_i) chunks
    of each (rounded half to even, `budgets`; f = 0 keeps one), uniformly without replacement,
    pi = k_i / C_i. Returns mask (M,) bool, Horvitz-Thompson weight 1 / pi on the mask (M,)
    and pi (M,), over the trajectories' chunks in order. With `request_rng(seed, request_id)`
    it is the mask `select_chunks` answers in that mode for a batch whose every group is
    mixed."""
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction}")
    lengths = np.asarray(lengths, dtype=np.int64)
    traj_of_chunk = np.repeat(np.arange(lengths.shape[0]), lengths)  # (M,)
    k = budgets(lengths, keep_fraction)  # (N,)
    pi = inclusion_probabilities(np.ones(traj_of_chunk.shape[0]), traj_of_chunk, k)
    mask = systematic_sample(pi, traj_of_chunk, k, rng)
    return mask, loss_weights("ht", mask, pi), pi


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
    f = _fraction(config, keep_fraction)
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


def _fraction(config: RunConfig, keep_fraction: float | None) -> float | None:
    """The keep fraction of this selection, or None for the run's fixed budget: a request's
    keep_fraction overrides the run's budget B, which overrides the run's keep_fraction."""
    if config.mode == "grpo":
        return 1.0
    if keep_fraction is not None:
        return check_keep_fraction(keep_fraction)
    return None if config.budget else config.keep_fraction


def _signal_ref_for(states: Mapping[str, TaskState], task_id: str, num_phases: int,
                    feature_dim: int) -> np.ndarray:
    state = states.get(task_id)
    ref = None if state is None else state.signal_ref
    if ref is None or ref.shape != (num_phases, feature_dim):
        return np.full((num_phases, feature_dim), np.nan)
    return ref


def _state_for(states: Mapping[str, TaskState], task_id: str, num_phases: int) -> TaskState:
    state = states.get(task_id)
    if state is None:
        return TaskState.empty(num_phases)
    if state.num_phases != num_phases:
        raise ValueError(f"stored state of task {task_id!r} has {state.num_phases} phases, "
                         f"the run has {num_phases}")
    return state


def kept_counts(batch: ChunkBatch, mask: np.ndarray, num_phases: int) -> np.ndarray:
    """(T, P) int64: kept chunks of the batch per (task in batch.task_ids order, phase)."""
    num_tasks = len(batch.task_ids)
    cell = batch.task_index[batch.traj_of_chunk] * num_phases + batch.phase
    kept = np.bincount(cell, weights=mask, minlength=num_tasks * num_phases)
    return kept.astype(np.int64).reshape(num_tasks, num_phases)


def recount_kept(
    states: Mapping[str, TaskState],
    batch: ChunkBatch,
    counted_mask: np.ndarray,  # bool (M,): the mask the states' chunks_kept include
    trained_mask: np.ndarray,  # bool (M,): the mask to count instead
    num_phases: int,
) -> dict[str, TaskState]:
    """The batch's task states with its kept chunks counted by `trained_mask` instead of
    `counted_mask`. Only chunks_kept depends on the mask (scores, observations, totals and the
    signal reference come from the batch itself), so this is the whole difference between
    committing a batch with one mask or the other."""
    delta = (kept_counts(batch, trained_mask, num_phases)
             - kept_counts(batch, counted_mask, num_phases))  # (T, P)
    out = {}
    for j, task_id in enumerate(batch.task_ids):
        prev = _state_for(states, task_id, num_phases)
        out[task_id] = replace(prev, chunks_kept=prev.chunks_kept + delta[j])
    return out
