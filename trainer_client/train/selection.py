"""From rollouts to the selector and back: the select request of a batch, the answer checked
against the batch, and the global selection split over torchrun ranks.

A trajectory's selector input is (task_id, group_id, success, phase_ids, action_features) with
action_features the chunk features of the run's phase score (`trainer_client.features`): the
flattened actions (C, K*A) for `action`, advantage-weighted action-head gradient sketches
(C, signal_dim) for `signal`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pcm_contract.errors import Conflict
from pcm_contract.models import SelectResponse
from selector_service.core import random_masks
from trainer_client.clients import SelectorClient
from trainer_client.features import chunk_features
from trainer_client.grpo import group_advantages
from trainer_client.train.distributed import Dist
from trainer_client.types import Trajectory

log = logging.getLogger(__name__)


def selector_inputs(
    trajectories: Sequence[Trajectory], score: str = "action", feature_dim: int = 0
) -> list[dict[str, Any]]:
    """The Select request's trajectory entries (NumPy arrays; the clients serialise them).
    Groups never span ranks, so advantages from this rank's trajectories are the global ones."""
    advantages = group_advantages([t.success for t in trajectories],
                                  [t.group_id for t in trajectories])
    features = chunk_features(trajectories, advantages, score, feature_dim)
    return [
        {
            "task_id": t.task_id,
            "group_id": t.group_id,
            "success": bool(t.success),
            "phase_ids": np.asarray(t.phase_ids, dtype=np.int64),
            "action_features": x,
        }
        for t, x in zip(trajectories, features, strict=True)
    ]


def random_selection(
    trajectories: Sequence[Trajectory], keep_fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The selector's `random` mode drawn in this process (`selector_service.core.random_masks`)
    for a batch whose trajectories all count: k_i = clamp(round(f C_i), 1, C_i) chunks of each
    (half to even), uniformly without replacement, with Horvitz-Thompson weights C_i / k_i.
    Returns (masks, weights), each a list of (C_i,), from the random stream of `seed`."""
    lengths = [t.num_chunks for t in trajectories]
    mask, weight, _ = random_masks(lengths, keep_fraction, np.random.default_rng(seed))
    cuts = np.cumsum(lengths)[:-1]
    return list(np.split(mask, cuts)), list(np.split(weight, cuts))


def _fits(response: SelectResponse, entries: Sequence[dict[str, Any]]) -> bool:
    return len(response.masks) == len(entries) and all(
        m.shape == (len(e["phase_ids"]),) and w.shape == m.shape
        for m, w, e in zip(response.masks, response.weights, entries, strict=True)
    )


def select(
    client: SelectorClient,
    run_id: str,
    entries: list[dict[str, Any]],
    *,
    request_id: str,
    trainer_id: str,
    step: int,
    keep_fraction: float | None = None,
) -> tuple[SelectResponse, str]:
    """One Select call; returns the answer and the request id used.

    The request id is deterministic per (run, trainer, step), so a retried or resumed step gets
    the selector's stored answer and is not counted twice. If a stored answer does not fit this
    batch (the step's rollouts differ from the first attempt's, e.g. a run restarted without
    --resume under an old run id), the batch is selected afresh under `request_id + ".r1"`."""
    request = {
        "request_id": request_id,
        "trainer_id": trainer_id,
        "step": step,
        "trajectories": entries,
        **({} if keep_fraction is None else {"keep_fraction": keep_fraction}),
    }
    response: SelectResponse | None
    try:
        response = client.select(run_id, request)
    except Conflict:  # the request_id is stored with another batch (a re-run step, say)
        response = None
    if response is None or not _fits(response, entries):
        retry_id = request_id + ".r1"
        log.warning(
            "selector answer for %s does not fit this batch (a stored answer of an earlier "
            "attempt?); selecting afresh as %s",
            request_id,
            retry_id,
        )
        response = client.select(run_id, {**request, "request_id": retry_id})
        if not _fits(response, entries):
            raise RuntimeError(f"selector answer for {retry_id} does not fit the batch")
        return response, retry_id
    return response, request_id


@dataclass
class StepSelection:
    """The selection of one step, from this rank's point of view."""

    masks: list[np.ndarray]  # this rank's trajectories
    weights: list[np.ndarray]
    selection_id: str = ""
    request_id: str = ""
    keep_probs: dict[str, list[float]] = field(default_factory=dict)
    # global batch figures (all ranks)
    trajectories: int = 0
    successes: int = 0
    total_chunks: int = 0
    kept_chunks: int = 0
    informative_chunks: int = 0  # the loss denominator: chunks of informative trajectories
    informative_trajectories: int = 0
    skipped_trajectories: int = 0
    select_s: float = 0.0  # the Select call itself (rank 0)
    predicted_efficiency: float | None = None  # budget_rule auto: the answer's prediction
    predicted_rate: float | None = None  # budget_objective rate: progress per second vs all

    @property
    def success_rate(self) -> float:
        return self.successes / self.trajectories if self.trajectories else 0.0

    @property
    def kept_fraction(self) -> float:
        """Kept chunks / chunks of informative trajectories (1.0 for grpo)."""
        return self.kept_chunks / self.informative_chunks if self.informative_chunks else 0.0


def select_global(
    dist: Dist,
    client: SelectorClient | None,
    run_id: str,
    trajectories: Sequence[Trajectory],
    *,
    request_id: str,
    trainer_id: str,
    step: int,
    score: str = "action",
    feature_dim: int = 0,
    keep_fraction: float | None = None,
) -> StepSelection:
    """Gather every rank's selector inputs to rank 0, select the global batch once, send each
    rank its own masks and weights (single process: just the Select call)."""
    gathered = dist.gather_to_main(selector_inputs(trajectories, score, feature_dim))
    parts: list[StepSelection] | None = None
    if dist.is_main:
        assert gathered is not None and client is not None
        entries = [e for rank_entries in gathered for e in rank_entries]
        t0 = time.perf_counter()
        response, used_id = select(
            client, run_id, entries, request_id=request_id, trainer_id=trainer_id, step=step,
            keep_fraction=keep_fraction,
        )
        select_s = time.perf_counter() - t0
        adv = group_advantages([e["success"] for e in entries], [e["group_id"] for e in entries])
        informative = adv != 0.0
        lengths = [len(e["phase_ids"]) for e in entries]
        figures: dict[str, Any] = {
            "selection_id": response.selection_id,
            "request_id": used_id,
            "keep_probs": dict(response.keep_probs),
            "trajectories": len(entries),
            "successes": int(sum(e["success"] for e in entries)),
            "total_chunks": int(sum(lengths)),
            "kept_chunks": int(sum(int(np.count_nonzero(m)) for m in response.masks)),
            "informative_chunks": int(
                sum(c for c, inf in zip(lengths, informative, strict=True) if inf)
            ),
            "informative_trajectories": int(informative.sum()),
            "skipped_trajectories": int(response.skipped_trajectories),
            "select_s": select_s,
            "predicted_efficiency": response.predicted_efficiency,
            "predicted_rate": response.predicted_rate,
        }
        parts = []
        start = 0
        for rank_entries in gathered:
            end = start + len(rank_entries)
            parts.append(
                StepSelection(
                    masks=[np.asarray(m) for m in response.masks[start:end]],
                    weights=[np.asarray(w) for w in response.weights[start:end]],
                    **figures,
                )
            )
            start = end
    return dist.scatter_from_main(parts)
