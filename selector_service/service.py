"""The application layer: runs, selection and outcome reports over a phase-state store.

The embedded client and both transports (gRPC, HTTP) call this class and nothing below it.
It validates input before touching state, so bad input never changes what is stored, and it is
idempotent on request_id with every store: a replay of the same request (same digest of its
canonical form) gets the stored answer; the same request_id with another request is a
Conflict naming request_id.

Phantom commits (docs/design.md): a client that selected locally (the service was slow or
down) replays the batch with the masks it trained on (`trained_masks`, `trained_weights`).
If the service never committed the request it commits it now, counted with those masks; if it
had (the client lost the answer) it reconciles the stored answer and the run's kept-chunk
counts to those masks. Either way the run counts each batch once, with the mask trained on.

Shared runs (docs/design.md, "Consistency of shared runs"): a selection is computed once, on
the state as read (the Redis store's copy may lack the last few commits), and the store folds
what the batch changes into the state as stored, in commit order; the answer says how many
commits its state lacked (`staleness`). Only a copy more than `max_staleness` commits old, or of
another config, is refreshed and the selection computed again.

Readiness follows the store: a store call that fails marks the service not ready at once, the
next one that succeeds marks it ready again (`add_readiness_listener`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np

from pcm_contract.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    StoreUnavailable,
    clip,
)
from pcm_contract.models import (
    LOCAL_SELECTION_PREFIX,
    DeleteAck,
    FlatSelect,
    OutcomeAck,
    OutcomeReport,
    RunConfigBody,
    RunConfigOut,
    RunInfo,
    SelectRequest,
    SelectResponse,
    TaskStateOut,
    check_trained,
    parse,
    valid_run_id,
)
from selector_service.core import (
    ChunkBatch,
    RunConfig,
    StepCost,
    fit_step_cost,
    kept_counts,
    phase_keep_weights,
    select_chunks,
)
from selector_service.core.costs import MIN_REPORTS
from selector_service.store import CommitStatus, FlatAnswer, PhaseStore, RunSnapshot

log = logging.getLogger(__name__)

# A select recomputes only when the store refused the state it computed on: once for a stale
# copy (the refusal brings the current state), more only while the run's config keeps changing.
MAX_COMMIT_ATTEMPTS = 4
MAX_STALENESS = 256  # commits a selection's state may lack (Settings.max_staleness)
# budget_objective rate: the history entries searched for the trainer's newest outcome reports
COST_HISTORY = 400


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
    staleness: int = 0  # commits the state it was computed on lacked
    keep_fraction: float = 0.0  # kept / informative chunks: the budget chosen
    predicted_efficiency: float | None = None  # budget_rule auto's prediction
    predicted_rate: float | None = None  # budget_objective rate's, once it has a step time


class ServiceObserver(Protocol):
    """Receives application events; the metrics module implements it."""

    def on_select(self, event: SelectEvent) -> None: ...

    def on_select_conflict(self, run_id: str, reason: str) -> None:
        """A selection is computed again: its state was refused (`stale` or `config`)."""

    def on_report(self, run_id: str, report: OutcomeReport, accepted: bool) -> None: ...

    def on_run_deleted(self, run_id: str) -> None: ...


class _TrackedStore:
    """The store, with the outcome of every call reported to `on_result` (readiness)."""

    def __init__(self, store: PhaseStore, on_result: Callable[[bool], None]) -> None:
        self._inner = store
        self._on_result = on_result

    @property
    def epoch(self) -> str:
        return str(getattr(self._inner, "epoch", ""))

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)
        if not callable(method):
            return method
        on_result = self._on_result

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                out = method(*args, **kwargs)
            except StoreUnavailable:
                on_result(False)
                raise
            on_result(True)
            return out

        return call


class SelectorService:
    def __init__(self, store: PhaseStore, observer: ServiceObserver | None = None, *,
                 max_staleness: int = MAX_STALENESS) -> None:
        if max_staleness < 0:
            raise ValueError("max_staleness must be >= 0")
        self.store = store
        self.observer = observer
        self.max_staleness = max_staleness
        self._store = cast(PhaseStore, _TrackedStore(store, self._store_result))
        self._ready = True
        self._ready_lock = threading.Lock()
        self._listeners: list[Callable[[bool], None]] = []

    # -- readiness ----------------------------------------------------------------------------

    def add_readiness_listener(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(ready)` whenever readiness changes (from any thread)."""
        self._listeners.append(listener)

    def remove_readiness_listener(self, listener: Callable[[bool], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    @property
    def store_ok(self) -> bool:
        """False since the last store call failed, until one succeeds."""
        return self._ready

    def _store_result(self, ok: bool) -> None:
        with self._ready_lock:
            if ok == self._ready:
                return
            self._ready = ok
        log.warning("phase-state store %s", "reachable again" if ok else "unavailable")
        for listener in list(self._listeners):
            try:
                listener(ok)
            except Exception:  # a listener must not break the call that noticed the change
                log.exception("readiness listener failed")

    @property
    def epoch(self) -> str:
        """The store's incarnation (answers carry it as `store_epoch`)."""
        return str(getattr(self.store, "epoch", ""))

    # -- runs ---------------------------------------------------------------------------------

    def put_run(self, run_id: str, config: RunConfigBody | Mapping[str, Any] | None = None,
                **fields: Any) -> RunInfo:
        """Create a run, or update an existing run's config keeping its state. Fields left out
        keep their stored (or default) values. `phases` and `feature_dim` cannot change once
        the run has state: delete the run first."""
        _check_run_id(run_id)
        body = parse(RunConfigBody, {**_as_dict(config), **fields})
        current = self._store.get_config(run_id)
        config_new = _build_config((current or RunConfig()), body.changes())
        if current is not None:
            snapshot = self._store.load(run_id, task_ids=[])
            if snapshot is not None and snapshot.state_version > 0:
                for name in ("phases", "feature_dim"):
                    if getattr(current, name) != getattr(config_new, name):
                        raise InvalidArgument(
                            name, f"cannot change from {getattr(current, name)} to "
                                  f"{getattr(config_new, name)} on a run that has state; "
                                  "delete the run first")
        self._store.put_config(run_id, config_new)
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> RunInfo:
        _check_run_id(run_id)
        snapshot = self._store.load(run_id)
        if snapshot is None:
            raise self._unknown_run(run_id)
        config = snapshot.config
        tasks = {}
        for task_id, state in sorted(snapshot.tasks.items()):
            tasks[task_id] = TaskStateOut(
                scores=_scores_out(state.scores),
                keep_probs=phase_keep_weights(config.keep_rule, state.scores,
                                              config.eps).tolist(),
                observations=state.observations.tolist(),
                chunks_total=state.chunks_total.tolist(),
                chunks_kept=state.chunks_kept.tolist(),
                trajectories=state.trajectories,
                skipped_trajectories=state.skipped_trajectories,
                state_version=state.version,
            )
        return RunInfo(run_id=run_id, config=RunConfigOut(**config.to_dict()),
                       state_version=snapshot.state_version,
                       outcome_reports=snapshot.outcome_reports, tasks=tasks,
                       store_epoch=self.epoch)

    def delete_run(self, run_id: str) -> DeleteAck:
        _check_run_id(run_id)
        if not self._store.delete_run(run_id):
            raise self._unknown_run(run_id)
        if self.observer is not None:
            self.observer.on_run_deleted(run_id)
        return DeleteAck(deleted=True)

    # -- select -------------------------------------------------------------------------------

    def select(self, run_id: str, request: SelectRequest | Mapping[str, Any]) -> SelectResponse:
        """Select on a request model (or its dict): the embedded client and HTTP. Validated by
        the model, then flattened onto the same path as gRPC's (`select_flat`)."""
        _check_run_id(run_id)
        req = parse(SelectRequest, request)
        check_trained(req)
        try:
            flat = FlatSelect.from_request(req)
        except ValueError:  # feature rows of different widths: name the first that is wrong
            config = self._store.get_config(run_id)
            if config is None:
                raise self._unknown_run(run_id) from None
            for i, t in enumerate(req.trajectories):
                width = t.action_features.shape[1]
                if width != config.feature_dim:
                    raise InvalidArgument(
                        f"trajectories[{i}].action_features",
                        f"rows have {width} values but the run's feature_dim is "
                        f"{config.feature_dim}") from None
            raise  # unreachable: ragged widths cannot all equal feature_dim
        return self.select_flat(run_id, flat)

    def select_flat(self, run_id: str, request: FlatSelect) -> SelectResponse:
        """Select on a flat request (the gRPC server's path: no per-trajectory split and no
        pydantic validation; `FlatSelect.check` and the core validate and name the field).

        One store round trip when the store has the run's state at hand (a Redis store keeps
        what it last read or was answered; a copy beyond the staleness bound costs one more
        selection, as the commit answers with the current state). A replay is found by the
        commit."""
        _check_run_id(run_id)
        request.check()
        digest = flat_digest(request)
        snapshot = self._snapshot(run_id, list(dict.fromkeys(request.task_ids)))
        if snapshot is None:
            raise self._unknown_run(run_id)
        batch = _batch(request, snapshot.config)
        return self._out(self._commit(run_id, request, batch, digest, snapshot))

    def _snapshot(self, run_id: str, task_ids: list[str]) -> RunSnapshot | None:
        """The state to select on: the store's `snapshot_for_select` (possibly a few commits
        old) where it has one, else `load`."""
        try:
            fast = self._store.snapshot_for_select  # type: ignore[attr-defined]
        except AttributeError:
            return self._store.load(run_id, task_ids)
        return cast("RunSnapshot | None", fast(run_id, task_ids))

    def _commit(self, run_id: str, req: FlatSelect, batch: ChunkBatch, digest: str,
                snapshot: RunSnapshot | None = None) -> SelectResponse:
        config = snapshot.config if snapshot is not None else self._store.get_config(run_id)
        if config is None:
            raise self._unknown_run(run_id)
        validated_for = (config.phases, config.feature_dim)
        selection_id = _selection_id(run_id, req.request_id)
        trained = _trained_arrays(req)
        aliases = (LOCAL_SELECTION_PREFIX + req.request_id,) if trained is not None else ()
        cost: StepCost | None = None
        cost_read = False
        for attempt in range(MAX_COMMIT_ATTEMPTS):
            if attempt or snapshot is None:
                snapshot = self._snapshot(run_id, batch.task_ids)
                if snapshot is None:
                    raise self._unknown_run(run_id)
            if attempt and self.observer is not None:  # the store refused the last state
                self.observer.on_select_conflict(
                    run_id, "stale" if snapshot.config == config else "config")
            if (snapshot.config.phases, snapshot.config.feature_dim) != validated_for:
                raise InvalidArgument("run_id", "the run's phases or feature_dim changed while "
                                                "selecting; resubmit the batch")
            config = snapshot.config
            if config.budget_objective == "rate" and not cost_read:
                cost, cost_read = self._step_cost(run_id, req.trainer_id), True
            sel = select_chunks(config, batch, snapshot.tasks, req.request_id, req.keep_fraction,
                                cost)
            assert sel.update is not None
            update = sel.update
            if trained is None:
                mask, weight = sel.mask.copy(), sel.weight.copy()
            else:  # the client trained on its own masks: count those (the scores are the same)
                mask, weight = trained
                update = update.with_kept(kept_counts(batch, mask, config.phases),
                                          batch.task_ids)
            mask.flags.writeable = False
            weight.flags.writeable = False
            kept = int(mask.sum())
            # Built from arrays the service made: no validation needed (the model's validators
            # would copy every trajectory's arrays again). The store sets state_version and
            # staleness when it commits.
            answer = SelectResponse.model_construct(
                selection_id=selection_id,
                state_version=0,
                masks=batch.split(mask),
                weights=batch.split(weight),
                kept_chunks=kept,
                total_chunks=sel.total_chunks,
                skipped_trajectories=sel.skipped_trajectories,
                keep_probs={t: w.tolist() for t, w in sel.keep_probs.items()},
                store_epoch="",
                staleness=0,
                keep_fraction=_keep_fraction(batch, sel.informative, kept),
                predicted_efficiency=(None if sel.budget is None
                                      else float(sel.budget.efficiency)),
                predicted_rate=(None if sel.budget is None or sel.budget.rate is None
                                else float(sel.budget.rate)),
            )
            history = {"type": "select", "request_id": req.request_id,
                       "trainer_id": req.trainer_id, "step": req.step, "kept_chunks": kept,
                       "total_chunks": sel.total_chunks,
                       "skipped_trajectories": sel.skipped_trajectories,
                       "trained": trained is not None}
            result = self._store.commit_select(
                run_id, req.request_id, snapshot.state_version, config, update, answer,
                history, digest=digest, aliases=aliases,
                max_staleness=self.max_staleness if attempt == 0 else None,
                flat=FlatAnswer(batch.lengths, mask, weight))
            if result.status is CommitStatus.COMMITTED:
                assert result.answer is not None
                if self.observer is not None:
                    self.observer.on_select(_select_event(
                        run_id, req.trainer_id, batch, sel, config, mask,
                        result.answer.staleness, result.answer.keep_fraction))
                return result.answer
            if result.status is CommitStatus.REPLAY:
                assert result.answer is not None
                if trained is None or _trained_match(result.answer, req):
                    return result.answer
                return self._reconcile(run_id, req, batch, digest, config)
            # STALE: the state read was too old or of another config; the store now has the
            # current one at hand.
        raise StoreUnavailable(f"run {clip(run_id)}: the run's config kept changing during "
                               f"{MAX_COMMIT_ATTEMPTS} attempts; retry")

    def _reconcile(self, run_id: str, req: FlatSelect, batch: ChunkBatch, digest: str,
                   config: RunConfig) -> SelectResponse:
        """The request was committed with other masks than the client trained on: move the
        run's kept-chunk counts to the trained masks and store them as the answer."""
        trained = _trained_arrays(req)
        assert trained is not None
        mask, weight = trained
        mask.flags.writeable = False
        weight.flags.writeable = False
        aliases = (LOCAL_SELECTION_PREFIX + req.request_id,)
        # Only another reconcile of the same request changes the stored answer meanwhile.
        for _ in range(MAX_COMMIT_ATTEMPTS):
            stored = self._stored_answer(run_id, req.request_id, digest)
            if stored is None:  # the record expired meanwhile: commit the batch afresh
                return self._commit(run_id, req, batch, digest)
            if _trained_match(stored, req):
                return stored
            counted = np.concatenate(stored.masks) if stored.masks else np.zeros(0, bool)
            if counted.shape != mask.shape:
                raise Conflict("request_id", f"{clip(req.request_id)}: the stored answer does "
                                             "not line up with this batch")
            delta = (kept_counts(batch, mask, config.phases)
                     - kept_counts(batch, counted, config.phases))  # (T, P)
            kept = int(mask.sum())
            answer = stored.model_copy(update={
                "masks": batch.split(mask), "weights": batch.split(weight),
                "kept_chunks": kept, "store_epoch": ""})
            history = {"type": "reconcile", "request_id": req.request_id,
                       "trainer_id": req.trainer_id, "step": req.step,
                       "state_version": stored.state_version, "kept_chunks": kept,
                       "previous_kept_chunks": stored.kept_chunks}
            result = self._store.reconcile_select(
                run_id, req.request_id, stored,
                {t: delta[j] for j, t in enumerate(batch.task_ids)}, answer, history,
                aliases=aliases)
            if result.status is CommitStatus.COMMITTED:
                log.info("run %s: reconciled request %s to the client's masks (kept %d -> %d)",
                         clip(run_id), clip(req.request_id), stored.kept_chunks, kept)
                return answer
            if result.status is CommitStatus.GONE:
                return self._commit(run_id, req, batch, digest)
        raise StoreUnavailable(f"run {clip(run_id)}: the stored answer kept changing during "
                               f"{MAX_COMMIT_ATTEMPTS} attempts; retry")

    def _step_cost(self, run_id: str, trainer_id: str) -> StepCost | None:
        """The trainer's step time fitted to the timings of its newest outcome reports
        (core/costs.py); while it has fewer than MIN_REPORTS, to every trainer's of the run
        (the replicas of a shared run share a step time). None until they identify it."""
        reports = [e for e in self._store.history(run_id, COST_HISTORY)
                   if e.get("type") == "report"]
        own = [e for e in reports if e.get("trainer_id") == trainer_id]
        return fit_step_cost([(e["rollout_s"] + e["select_s"], e["backward_s"], e["kept_chunks"])
                              for e in (own if len(own) >= MIN_REPORTS else reports)])

    # -- outcomes -----------------------------------------------------------------------------

    def report_outcomes(self, run_id: str,
                        report: OutcomeReport | Mapping[str, Any]) -> OutcomeAck:
        _check_run_id(run_id)
        rep = parse(OutcomeReport, report)
        digest = report_digest(rep)
        history = {"type": "report", "request_id": rep.request_id, "trainer_id": rep.trainer_id,
                   "step": rep.step, "selection_id": rep.selection_id,
                   "success_rate": rep.success_rate, "loss": rep.loss,
                   "kept_chunks": rep.kept_chunks, **rep.timings.model_dump()}
        try:
            accepted = self._store.record_report(run_id, rep.request_id, rep, history,
                                                 digest=digest, require_selection=True)
        except NotFound as exc:
            if exc.field == "run_id":
                raise self._unknown_run(run_id) from None
            raise
        if self.observer is not None:
            self.observer.on_report(run_id, rep, accepted)
        return OutcomeAck(accepted=True, store_epoch=self.epoch)

    def history(self, run_id: str, count: int = 100) -> list[dict[str, Any]]:
        _check_run_id(run_id)
        return self._store.history(run_id, count)

    # -- health -------------------------------------------------------------------------------

    def ready(self) -> bool:
        try:
            self._store.ping()
        except StoreUnavailable:
            return False
        return True

    def _stored_answer(self, run_id: str, request_id: str,
                       digest: str) -> SelectResponse | None:
        stored = self._store.get_request(run_id, request_id, digest)
        if stored is None:
            return None
        kind, answer = stored
        if kind != "select":
            raise Conflict("request_id", "already used by an outcome report")
        return cast(SelectResponse, answer)

    def _out(self, answer: SelectResponse) -> SelectResponse:
        return answer.model_copy(update={"store_epoch": self.epoch})

    def _unknown_run(self, run_id: str) -> NotFound:
        if self.observer is not None:  # e.g. deleted through another selector: drop its series
            self.observer.on_run_deleted(run_id)
        return NotFound(f"run {clip(run_id)} not found; create it first "
                        "(PUT /v1/runs/RUN_ID)")


def _select_event(run_id: str, trainer_id: str, batch: ChunkBatch, sel: Any,
                  config: RunConfig, mask: np.ndarray, staleness: int,
                  keep_fraction: float = 0.0) -> SelectEvent:
    num_phases = config.phases
    task_of_chunk = batch.task_index[batch.traj_of_chunk]
    cell = task_of_chunk * num_phases + batch.phase
    size = len(batch.task_ids) * num_phases
    total = np.bincount(cell, minlength=size)
    kept = np.bincount(cell, weights=mask, minlength=size).astype(np.int64)
    chunks = {(batch.task_ids[c // num_phases], c % num_phases): (int(total[c]), int(kept[c]))
              for c in map(int, np.flatnonzero(total))}
    return SelectEvent(
        run_id=run_id, trainer_id=trainer_id, chunks=chunks,
        keep_probs={t: w.tolist() for t, w in sel.keep_probs.items()},
        scores={t: _scores_out(s.scores) for t, s in sel.new_states.items()},
        kept_chunks=int(mask.sum()), total_chunks=sel.total_chunks,
        skipped_trajectories=sel.skipped_trajectories, mode=config.mode, score=config.score,
        weighting=config.weighting, staleness=staleness, keep_fraction=keep_fraction,
        predicted_efficiency=(None if sel.budget is None else float(sel.budget.efficiency)),
        predicted_rate=(None if sel.budget is None or sel.budget.rate is None
                        else float(sel.budget.rate)))


def _keep_fraction(batch: ChunkBatch, informative: np.ndarray, kept: int) -> float:
    """Kept chunks over the chunks of informative trajectories (0 when there are none)."""
    chunks = int(batch.lengths[informative].sum())
    return min(1.0, kept / chunks) if chunks else 0.0


def _scores_out(scores: np.ndarray) -> list[float | None]:
    return [None if math.isnan(s) else float(s) for s in scores]


def _selection_id(run_id: str, request_id: str) -> str:
    digest = hashlib.blake2b(f"{run_id}\0{request_id}".encode(), digest_size=12).hexdigest()
    return f"sel-{digest}"


def _check_run_id(run_id: str) -> None:
    if not valid_run_id(run_id):
        raise InvalidArgument("run_id", f"{clip(run_id)} is not a valid run id "
                                        "(1-64 chars: letters, digits, '.', '_', '-')")


def _batch(req: FlatSelect, config: RunConfig) -> ChunkBatch:
    return ChunkBatch.from_flat(req.task_ids, req.group_ids, req.success, req.lengths,
                                req.phase, req.features, num_phases=config.phases,
                                feature_dim=config.feature_dim)


def _trained_arrays(req: FlatSelect) -> tuple[np.ndarray, np.ndarray] | None:
    """The flat (M,) trained mask and weights of a replay (copies), or None."""
    if req.trained_mask is None or req.trained_weight is None:
        return None
    return req.trained_mask.astype(bool), req.trained_weight.astype(np.float64)


def _trained_match(answer: SelectResponse, req: FlatSelect) -> bool:
    """The stored answer is what the client trained on (masks and weights, bit for bit)."""
    if req.trained_mask is None or req.trained_weight is None:
        return True
    lengths = [int(m.shape[0]) for m in answer.masks]
    if lengths != req.lengths.tolist():
        return False
    masks = np.concatenate(answer.masks) if answer.masks else np.zeros(0, bool)
    weights = np.concatenate(answer.weights) if answer.weights else np.zeros(0)
    return (np.array_equal(masks, req.trained_mask)
            and np.array_equal(weights, np.asarray(req.trained_weight, np.float64)))


# -- request digests (idempotency keys are tied to the request) --------------------------------


def flat_digest(req: FlatSelect) -> str:
    """A digest of the canonical Select request: ids, step, keep_fraction and every trajectory
    (features as the float32 values the core computes on, phases as int64), whatever the
    transport. trained_masks / trained_weights are not part of it: they say what the client
    did with the answer, not what it asked. Hashed per trajectory (its phase ids, then its
    feature rows), as earlier versions did, so records stored by them still match. (SHA-256:
    the fastest stdlib hash on CPUs with SHA instructions, ~5 ms for a full LIBERO step.)"""
    lengths = req.lengths.tolist()
    dim = int(req.features.shape[1]) if req.features.ndim == 2 else 0
    head = [req.request_id, req.trainer_id, req.step,
            None if req.keep_fraction is None else float(req.keep_fraction),
            [[t, g, s, [c, dim], c] for t, g, s, c in zip(
                req.task_ids, req.group_ids, req.success.tolist(), lengths, strict=True)]]
    h = hashlib.sha256(b"pcm-select\0")
    h.update(json.dumps(head).encode())
    phases = np.ascontiguousarray(req.phase, dtype="<i8").reshape(-1).view(np.uint8).data
    feats = np.ascontiguousarray(req.features, dtype="<f4").reshape(-1).view(np.uint8).data
    start = 0
    for c in lengths:
        end = start + c
        h.update(phases[8 * start:8 * end])
        h.update(feats[4 * dim * start:4 * dim * end])
        start = end
    return h.hexdigest()[:32]


def report_digest(rep: OutcomeReport) -> str:
    """A digest of the canonical outcome report (its JSON with sorted keys)."""
    h = hashlib.sha256(b"pcm-report\0")
    h.update(json.dumps(rep.model_dump(mode="json"), sort_keys=True).encode())
    return h.hexdigest()[:32]


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, RunConfigBody):
        return value.changes()
    return dict(value)


def _build_config(base: RunConfig, changes: dict[str, Any]) -> RunConfig:
    return base.updated(**changes)


