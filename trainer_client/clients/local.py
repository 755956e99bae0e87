"""The local fallback (opt-in: ``fallback=True``): what a remote client saw of each run, and
selection from it while the service stays unreachable.

When the service stays unreachable after the retries (``StoreUnavailable``, which includes
connection failures and timeouts), ``select`` selects locally with ``select_with_keep_probs``:
the run config and the newest keep probabilities this client saw (cached from every answer,
``put_run`` and ``get_run``). The answer's selection_id is ``local-<request_id>`` and its
state_version the last one seen. A client that never saw the run's config raises the
``StoreUnavailable``. The batch is logged pending (replay_log.py) and counted by the service,
with the masks trained on, once it is back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from pcm_contract.errors import StoreUnavailable
from pcm_contract.models import (
    LOCAL_SELECTION_PREFIX,
    RunInfo,
    SelectRequest,
    SelectResponse,
)
from selector_service.core import ChunkBatch, RunConfig, select_with_keep_probs

log = logging.getLogger(__name__)


@dataclass
class _SeenRun:
    config: RunConfig
    state_version: int = 0
    keep_probs: dict[str, list[float]] = field(default_factory=dict)


class LocalFallback:
    """What a client saw of each run, and local selection from it."""

    def __init__(self) -> None:
        self._runs: dict[str, _SeenRun] = {}

    def knows(self, run_id: str) -> bool:
        return run_id in self._runs

    def observe_run(self, info: RunInfo) -> None:
        seen = _SeenRun(RunConfig(**info.config.model_dump()), info.state_version,
                        {t: list(s.keep_probs) for t, s in info.tasks.items()})
        self._runs[info.run_id] = seen

    def observe_answer(self, run_id: str, answer: SelectResponse) -> None:
        seen = self._runs.get(run_id)
        if seen is None or answer.selection_id.startswith(LOCAL_SELECTION_PREFIX):
            return
        seen.keep_probs.update(answer.keep_probs)
        seen.state_version = max(seen.state_version, answer.state_version)

    def forget(self, run_id: str) -> None:
        self._runs.pop(run_id, None)

    def select(self, run_id: str, request: SelectRequest,
               cause: StoreUnavailable) -> SelectResponse:
        """Select locally with the cached config and keep probabilities (no state update)."""
        seen = self._runs.get(run_id)
        if seen is None:
            raise StoreUnavailable(
                f"{cause}; no local fallback for run {run_id!r}: this client never saw its "
                "config (call get_run or put_run while the selector is up)") from cause
        trajs = request.trajectories
        batch = ChunkBatch.from_trajectories(
            task_ids=[t.task_id for t in trajs],
            group_ids=[t.group_id for t in trajs],
            success=np.fromiter((t.success for t in trajs), dtype=bool, count=len(trajs)),
            phase_ids=[t.phase_ids for t in trajs],
            action_features=[t.action_features for t in trajs],
            num_phases=seen.config.phases,
            feature_dim=seen.config.feature_dim,
        )
        sel = select_with_keep_probs(seen.config, batch, seen.keep_probs, request.request_id,
                                     request.keep_fraction)
        for arr in (sel.mask, sel.weight):
            arr.flags.writeable = False
        log.warning("selector unreachable (%s): selected run %s request %s locally", cause,
                    run_id, request.request_id)
        return SelectResponse(
            selection_id=LOCAL_SELECTION_PREFIX + request.request_id,
            state_version=seen.state_version,
            masks=batch.split(sel.mask),
            weights=batch.split(sel.weight),
            kept_chunks=sel.kept_chunks,
            total_chunks=sel.total_chunks,
            skipped_trajectories=sel.skipped_trajectories,
            keep_probs={t: w.tolist() for t, w in sel.keep_probs.items()},
        )
