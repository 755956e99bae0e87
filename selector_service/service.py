"""The application layer: runs, selection and outcome reports over a phase-state store.

The embedded client and both transports (gRPC, HTTP) call this class and nothing below it.
It validates input before touching state, so bad input never changes what is stored, and it is
idempotent on request_id with every store.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from pydantic import ValidationError

from selector_service.core import ChunkBatch, RunConfig, keep_weights, select_chunks
from selector_service.errors import InvalidArgument, NotFound, StoreUnavailable
from selector_service.models import (
    RUN_ID_PATTERN,
    DeleteAck,
    OutcomeAck,
    OutcomeReport,
    RunConfigBody,
    RunConfigOut,
    RunInfo,
    SelectRequest,
    SelectResponse,
    TaskStateOut,
)
from selector_service.store import CommitStatus, PhaseStore

log = logging.getLogger(__name__)

MAX_COMMIT_ATTEMPTS = 64  # optimistic-concurrency retries before answering "unavailable"
_RUN_ID = re.compile(RUN_ID_PATTERN)


@dataclass(frozen=True)
class SelectEvent:
    """What a committed (not replayed) selection did, for metrics."""

    run_id: str
    trainer_id: str
    chunks: dict[tuple[str, int], tuple[int, int]]  # (task, phase) -> (total, kept)
    keep_probs: dict[str, list[float]]
    scores: dict[str, list[float | None]]
    kept_chunks: int
    total_chunks: int
    skipped_trajectories: int
    mode: str = "pcm"
    score: str = "signal"
    weighting: str = "mean"


class ServiceObserver(Protocol):
    """Receives application events; the metrics module implements it."""

    def on_select(self, event: SelectEvent) -> None: ...

    def on_report(self, run_id: str, report: OutcomeReport, accepted: bool) -> None: ...

    def on_run_deleted(self, run_id: str) -> None: ...


class SelectorService:
    def __init__(self, store: PhaseStore, observer: ServiceObserver | None = None) -> None:
        self.store = store
        self.observer = observer

    # -- runs ---------------------------------------------------------------------------------

    def put_run(self, run_id: str, config: RunConfigBody | Mapping[str, Any] | None = None,
                **fields: Any) -> RunInfo:
        """Create a run, or update an existing run's config keeping its state. Fields left out
        keep their stored (or default) values. `phases` and `feature_dim` cannot change once
        the run has state: delete the run first."""
        _check_run_id(run_id)
        body = _parse(RunConfigBody, {**_as_dict(config), **fields})
        current = self.store.get_config(run_id)
        config_new = _build_config((current or RunConfig()), body.changes())
        if current is not None:
            snapshot = self.store.load(run_id, task_ids=[])
            if snapshot is not None and snapshot.state_version > 0:
                for name in ("phases", "feature_dim"):
                    if getattr(current, name) != getattr(config_new, name):
                        raise InvalidArgument(
                            name, f"cannot change from {getattr(current, name)} to "
                                  f"{getattr(config_new, name)} on a run that has state; "
                                  "delete the run first")
        self.store.put_config(run_id, config_new)
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> RunInfo:
        _check_run_id(run_id)
        snapshot = self.store.load(run_id)
        if snapshot is None:
            raise _unknown_run(run_id)
        config = snapshot.config
        tasks = {}
        for task_id, state in sorted(snapshot.tasks.items()):
            tasks[task_id] = TaskStateOut(
                scores=_scores_out(state.scores),
                keep_probs=keep_weights(state.scores, config.eps).tolist(),
                observations=state.observations.tolist(),
                chunks_total=state.chunks_total.tolist(),
                chunks_kept=state.chunks_kept.tolist(),
                trajectories=state.trajectories,
                skipped_trajectories=state.skipped_trajectories,
                state_version=state.version,
            )
        return RunInfo(run_id=run_id, config=RunConfigOut(**config.to_dict()),
                       state_version=snapshot.state_version,
                       outcome_reports=snapshot.outcome_reports, tasks=tasks)

    def delete_run(self, run_id: str) -> DeleteAck:
        _check_run_id(run_id)
        if not self.store.delete_run(run_id):
            raise _unknown_run(run_id)
        if self.observer is not None:
            self.observer.on_run_deleted(run_id)
        return DeleteAck(deleted=True)

    # -- select -------------------------------------------------------------------------------

    def select(self, run_id: str, request: SelectRequest | Mapping[str, Any]) -> SelectResponse:
        _check_run_id(run_id)
        req = _parse(SelectRequest, request)
        # A replay gets the stored answer before anything else is looked at.
        replay = self._stored_answer(run_id, req.request_id)
        if replay is not None:
            return replay
        config = self.store.get_config(run_id)
        if config is None:
            raise _unknown_run(run_id)
        trajs = req.trajectories
        batch = ChunkBatch.from_trajectories(
            task_ids=[t.task_id for t in trajs],
            group_ids=[t.group_id for t in trajs],
            success=np.fromiter((t.success for t in trajs), dtype=bool, count=len(trajs)),
            phase_ids=[t.phase_ids for t in trajs],
            action_features=[t.action_features for t in trajs],
            num_phases=config.phases,
            feature_dim=config.feature_dim,
        )
        validated_for = (config.phases, config.feature_dim)
        selection_id = _selection_id(run_id, req.request_id)
        for _ in range(MAX_COMMIT_ATTEMPTS):
            snapshot = self.store.load(run_id, batch.task_ids)
            if snapshot is None:
                raise _unknown_run(run_id)
            if (snapshot.config.phases, snapshot.config.feature_dim) != validated_for:
                raise InvalidArgument("run_id", "the run's phases or feature_dim changed while "
                                                "selecting; resubmit the batch")
            config = snapshot.config
            sel = select_chunks(config, batch, snapshot.tasks, req.request_id, req.keep_fraction)
            mask = sel.mask.copy()
            weight = sel.weight.copy()
            mask.flags.writeable = False
            weight.flags.writeable = False
            answer = SelectResponse(
                selection_id=selection_id,
                state_version=snapshot.state_version + 1,
                masks=batch.split(mask),
                weights=batch.split(weight),
                kept_chunks=sel.kept_chunks,
                total_chunks=sel.total_chunks,
                skipped_trajectories=sel.skipped_trajectories,
                keep_probs={t: w.tolist() for t, w in sel.keep_probs.items()},
            )
            history = {"type": "select", "request_id": req.request_id,
                       "trainer_id": req.trainer_id, "step": req.step,
                       "state_version": answer.state_version, "kept_chunks": sel.kept_chunks,
                       "total_chunks": sel.total_chunks,
                       "skipped_trajectories": sel.skipped_trajectories}
            result = self.store.commit_select(run_id, req.request_id, snapshot.state_version,
                                              sel.new_states, answer, history)
            if result.status is CommitStatus.COMMITTED:
                if self.observer is not None:
                    self.observer.on_select(_select_event(run_id, req.trainer_id, batch, sel,
                                                          config))
                return answer
            if result.status is CommitStatus.REPLAY:
                assert result.answer is not None
                return result.answer
            # CONFLICT: another selection committed first; recompute on its state.
        raise StoreUnavailable(f"run {run_id!r}: state kept changing during "
                               f"{MAX_COMMIT_ATTEMPTS} attempts; retry")

    # -- outcomes -----------------------------------------------------------------------------

    def report_outcomes(self, run_id: str,
                        report: OutcomeReport | Mapping[str, Any]) -> OutcomeAck:
        _check_run_id(run_id)
        rep = _parse(OutcomeReport, report)
        history = {"type": "report", "request_id": rep.request_id, "trainer_id": rep.trainer_id,
                   "step": rep.step, "selection_id": rep.selection_id,
                   "success_rate": rep.success_rate, "loss": rep.loss,
                   "kept_chunks": rep.kept_chunks, **rep.timings.model_dump()}
        accepted = self.store.record_report(run_id, rep.request_id, rep, history)
        if self.observer is not None:
            self.observer.on_report(run_id, rep, accepted)
        return OutcomeAck(accepted=True)

    def history(self, run_id: str, count: int = 100) -> list[dict[str, Any]]:
        _check_run_id(run_id)
        return self.store.history(run_id, count)

    # -- health -------------------------------------------------------------------------------

    def ready(self) -> bool:
        try:
            self.store.ping()
        except StoreUnavailable:
            return False
        return True

    def _stored_answer(self, run_id: str, request_id: str) -> SelectResponse | None:
        stored = self.store.get_request(run_id, request_id)
        if stored is None:
            return None
        kind, answer = stored
        if kind != "select":
            raise InvalidArgument("request_id", "already used by an outcome report")
        return answer


def _select_event(run_id: str, trainer_id: str, batch: ChunkBatch, sel: Any,
                  config: RunConfig) -> SelectEvent:
    num_phases = config.phases
    task_of_chunk = batch.task_index[batch.traj_of_chunk]
    cell = task_of_chunk * num_phases + batch.phase
    size = len(batch.task_ids) * num_phases
    total = np.bincount(cell, minlength=size)
    kept = np.bincount(cell, weights=sel.mask, minlength=size).astype(np.int64)
    chunks = {(batch.task_ids[c // num_phases], c % num_phases): (int(total[c]), int(kept[c]))
              for c in map(int, np.flatnonzero(total))}
    return SelectEvent(
        run_id=run_id, trainer_id=trainer_id, chunks=chunks,
        keep_probs={t: w.tolist() for t, w in sel.keep_probs.items()},
        scores={t: _scores_out(s.scores) for t, s in sel.new_states.items()},
        kept_chunks=sel.kept_chunks, total_chunks=sel.total_chunks,
        skipped_trajectories=sel.skipped_trajectories, mode=config.mode, score=config.score,
        weighting=config.weighting)


def _scores_out(scores: np.ndarray) -> list[float | None]:
    return [None if math.isnan(s) else float(s) for s in scores]


def _selection_id(run_id: str, request_id: str) -> str:
    digest = hashlib.blake2b(f"{run_id}\0{request_id}".encode(), digest_size=12).hexdigest()
    return f"sel-{digest}"


def _check_run_id(run_id: str) -> None:
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise InvalidArgument("run_id", f"{run_id!r} is not a valid run id "
                                        "(1-64 chars: letters, digits, '.', '_', '-')")


def _unknown_run(run_id: str) -> NotFound:
    return NotFound(f"run {run_id!r} not found; create it first (PUT /v1/runs/{run_id})")


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, RunConfigBody):
        return value.changes()
    return dict(value)


def _build_config(base: RunConfig, changes: dict[str, Any]) -> RunConfig:
    return base.updated(**changes)


def _parse(model: Any, value: Any) -> Any:
    """Validate a dict (or pass a model through); pydantic errors become InvalidArgument naming
    the first bad field, e.g. ``trajectories[2].action_features``."""
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None


def invalid_from_validation(exc: ValidationError) -> InvalidArgument:
    err = exc.errors(include_url=False)[0]
    return InvalidArgument(field_path(err["loc"]) or "body", err["msg"])


def field_path(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """('trajectories', 2, 'action_features') -> 'trajectories[2].action_features'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
