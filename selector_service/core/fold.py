"""What a batch changes in its tasks' states, and folding that into a stored state.

A selection is computed on the state as read, which may be a few commits old when several
trainers share a run. What it changes in the state does not depend on that: per task and phase,
the batch's evidence v_tp and whether it was observed, its chunk counts, and (score `signal`)
its mean group phase sums for the reference. `batch_update` gathers those; `fold_task` applies
them to whatever state is stored when the selection commits: the EMA of the scores
(`update_scores`, bias-corrected by the stored observation counts) or, with a score window,
the window's sums and its refresh (`fold_scores`), and the EMA of the reference
(`fold_reference`) re-applied to the stored values, the counters added. The stores fold in
commit order, atomically (the Redis store in Lua, store/lua.py, operation for operation the
same as `fold_task`), so no selection is recomputed because another committed first
(docs/design.md, "Consistency of shared runs").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from selector_service.core.batch import ChunkBatch
from selector_service.core.signal import fold_reference
from selector_service.core.state import TaskState
from selector_service.core.weights import update_scores


@dataclass(frozen=True)
class TaskUpdate:
    """One batch's contribution to one task's state."""

    evidence: np.ndarray  # float64 (P,): v_tp, the batch's phase score estimate
    observed: np.ndarray  # bool (P,): phases whose v_tp enters the EMA
    chunks_total: np.ndarray  # int64 (P,): chunks submitted
    chunks_kept: np.ndarray  # int64 (P,): chunks kept for backward
    trajectories: int
    skipped_trajectories: int
    # score `signal`: the batch's mean group phase sums (P, D) and the phases present (P,),
    # the reference's EMA input; None for score `action` (no reference)
    group_mean: np.ndarray | None = None
    present: np.ndarray | None = None

    def with_kept(self, chunks_kept: np.ndarray) -> TaskUpdate:
        """The same update counting other kept chunks (a client trained on its own mask)."""
        return replace(self, chunks_kept=np.asarray(chunks_kept, dtype=np.int64))


@dataclass(frozen=True)
class StateUpdate:
    """One batch's contribution to the state of each of its tasks."""

    eta: float
    bias_corrected: bool  # score `signal`: the EMA is bias-corrected by observation counts
    num_phases: int
    tasks: dict[str, TaskUpdate]
    window: int = 0  # score_window: 0 EMA after every batch, T >= 1 the paper's refresh

    def with_kept(self, kept: np.ndarray, task_ids: list[str]) -> StateUpdate:
        """kept: (T, P) kept chunks per task (in `task_ids` order) and phase."""
        return replace(self, tasks={t: self.tasks[t].with_kept(kept[j])
                                    for j, t in enumerate(task_ids)})


def batch_update(
    batch: ChunkBatch,
    evidence: np.ndarray,  # (T, P)
    observed: np.ndarray,  # bool (T, P)
    mask: np.ndarray,  # bool (M,)
    informative: np.ndarray,  # bool (N,)
    num_phases: int,
    eta: float,
    bias_corrected: bool,
    group_mean: np.ndarray | None = None,  # (T, P, D), score `signal`
    present: np.ndarray | None = None,  # bool (T, P), score `signal`
    window: int = 0,
) -> StateUpdate:
    """The batch's update of its tasks' states (rows in batch.task_ids order)."""
    num_tasks = len(batch.task_ids)
    cells = num_tasks * num_phases
    cell = batch.task_index[batch.traj_of_chunk] * num_phases + batch.phase
    total = np.bincount(cell, minlength=cells).astype(np.int64).reshape(num_tasks, num_phases)
    kept = np.bincount(cell, weights=mask, minlength=cells)
    kept = kept.astype(np.int64).reshape(num_tasks, num_phases)
    trajs = np.bincount(batch.task_index, minlength=num_tasks)
    skipped = np.bincount(batch.task_index, weights=~informative, minlength=num_tasks)
    tasks = {}
    for j, task_id in enumerate(batch.task_ids):
        tasks[task_id] = TaskUpdate(
            evidence=np.asarray(evidence[j], dtype=np.float64),
            observed=np.asarray(observed[j], dtype=bool),
            chunks_total=total[j], chunks_kept=kept[j],
            trajectories=int(trajs[j]), skipped_trajectories=int(skipped[j]),
            group_mean=None if group_mean is None else np.asarray(group_mean[j], np.float64),
            present=None if present is None else np.asarray(present[j], dtype=bool))
    return StateUpdate(eta=float(eta), bias_corrected=bool(bias_corrected),
                       num_phases=num_phases, tasks=tasks, window=int(window))


def fold_scores(prev: TaskState, evidence: np.ndarray, observed: np.ndarray, eta: float,
                bias_corrected: bool, window: int
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, int]:
    """A task's phase scores after one batch's evidence, and its score window after it:
    (scores (P,), window_sum, window_count, window_batches).

    window 0: the EMA of `update_scores`. window T >= 1 (the paper's T_rc, arXiv 2605.16154
    Sec. 4.3): the evidence joins the window; when the window holds T batches, or while no
    phase has a score yet (the first batch's own scores are used), each phase's score becomes
    the mean of its evidence in the window (0 where it had none, NaN while it never had any)
    and the window empties; in between the scores are held."""
    if window == 0:
        scores = update_scores(prev.scores, evidence, observed, eta,
                               prev.observations if bias_corrected else None)
        return scores, prev.window_sum, prev.window_count, prev.window_batches
    wsum, wcount = prev.window()
    wsum = wsum + np.where(observed, evidence, 0.0)
    wcount = wcount + observed
    batches = prev.window_batches + 1
    if batches < window and not np.isnan(prev.scores).all():
        return prev.scores.copy(), wsum, wcount, batches
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = wsum / wcount
    scores = np.where(wcount > 0, mean, np.where(np.isnan(prev.scores), np.nan, 0.0))
    p = prev.num_phases
    return scores, np.zeros(p), np.zeros(p, dtype=np.int64), 0


def fold_task(state: TaskState | None, update: TaskUpdate, eta: float, bias_corrected: bool,
              num_phases: int, window: int = 0) -> TaskState:
    """The task's state after `update`, folded into `state` (None: the task has none yet)."""
    prev = TaskState.empty(num_phases) if state is None else state
    if prev.num_phases != num_phases:
        raise ValueError(f"stored task state has {prev.num_phases} phases, the update "
                         f"{num_phases}")
    scores, wsum, wcount, batches = fold_scores(prev, update.evidence, update.observed, eta,
                                                bias_corrected, window)
    signal_ref = prev.signal_ref
    if update.group_mean is not None and update.present is not None:
        shape = update.group_mean.shape
        reference = prev.signal_ref
        if reference is None or reference.shape != shape:
            reference = np.full(shape, np.nan)
        signal_ref = fold_reference(reference, update.group_mean, update.present, eta)
    return TaskState(
        scores=scores,
        observations=prev.observations + update.observed,
        chunks_total=prev.chunks_total + update.chunks_total,
        chunks_kept=prev.chunks_kept + update.chunks_kept,
        trajectories=prev.trajectories + update.trajectories,
        skipped_trajectories=prev.skipped_trajectories + update.skipped_trajectories,
        version=prev.version + 1,
        signal_ref=signal_ref,
        window_sum=wsum,
        window_count=wcount,
        window_batches=batches,
    )


def fold_states(states: Mapping[str, TaskState], update: StateUpdate) -> dict[str, TaskState]:
    """The states of the update's tasks after it, folded into `states` (tasks absent there
    start empty)."""
    return {t: fold_task(states.get(t), u, update.eta, update.bias_corrected,
                         update.num_phases, update.window)
            for t, u in update.tasks.items()}
