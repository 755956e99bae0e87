"""In-memory phase-state store: the embedded default. Thread-safe; state dies with the process."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pcm_contract.errors import Conflict, InvalidArgument, NotFound, StoreUnavailable, clip
from pcm_contract.models import OutcomeReport, SelectResponse
from selector_service.core import RunConfig, TaskState
from selector_service.core.fold import StateUpdate, fold_task
from selector_service.store.base import (
    CommitResult,
    CommitStatus,
    FlatAnswer,
    RequestKind,
    RunSnapshot,
)
from selector_service.store.state_codec import decode_state, encode_state

MAX_REQUESTS_PER_RUN = 100_000  # idempotency records kept per run, oldest dropped first
MAX_HISTORY = 10_000

# (kind, answer or None, digest of the request)
_Record = tuple[RequestKind, Any, str]


@dataclass
class _Run:
    config: RunConfig
    state_version: int = 0
    outcome_reports: int = 0
    revision: int = 0
    tasks: dict[str, TaskState] = field(default_factory=dict)
    requests: OrderedDict[str, _Record] = field(default_factory=OrderedDict)
    selections: OrderedDict[str, None] = field(default_factory=OrderedDict)
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))


def _copy_state(state: TaskState) -> TaskState:
    return replace(state, scores=state.scores.copy(), observations=state.observations.copy(),
                   chunks_total=state.chunks_total.copy(), chunks_kept=state.chunks_kept.copy(),
                   signal_ref=None if state.signal_ref is None else state.signal_ref.copy())


def check_digest(request_id: str, stored: str, digest: str) -> None:
    """Conflict unless the digests agree (an empty one is not compared)."""
    if stored and digest and stored != digest:
        raise Conflict("request_id", f"{clip(request_id)} was already used for a different "
                                     "request; use a new request_id for a new request")


class MemoryStore:
    def __init__(self, max_requests_per_run: int = MAX_REQUESTS_PER_RUN) -> None:
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._max_requests = max_requests_per_run
        self._epoch = f"memory-{uuid.uuid4().hex[:16]}"  # this process's store

    @property
    def epoch(self) -> str:
        return self._epoch

    def ping(self) -> None:
        return None

    def put_config(self, run_id: str, config: RunConfig) -> bool:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                self._runs[run_id] = _Run(config=config)
                return True
            run.config = config
            return False

    def get_config(self, run_id: str) -> RunConfig | None:
        with self._lock:
            run = self._runs.get(run_id)
            return None if run is None else run.config

    def delete_run(self, run_id: str) -> bool:
        with self._lock:
            return self._runs.pop(run_id, None) is not None

    def load(self, run_id: str, task_ids: Iterable[str] | None = None) -> RunSnapshot | None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return None
            names = run.tasks.keys() if task_ids is None else task_ids
            tasks = {t: _copy_state(run.tasks[t]) for t in names if t in run.tasks}
            return RunSnapshot(run.config, run.state_version, run.outcome_reports, tasks,
                               revision=run.revision)

    def snapshot_for_select(self, run_id: str,
                            task_ids: Iterable[str]) -> RunSnapshot | None:
        """The state a select computes on (in memory: `load`, always current)."""
        return self.load(run_id, task_ids)

    def get_request(self, run_id: str, request_id: str,
                    digest: str = "") -> tuple[RequestKind, Any] | None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or request_id not in run.requests:
                return None
            kind, answer, stored = run.requests[request_id]
            check_digest(request_id, stored, digest)
            return kind, answer  # answers are immutable (frozen, read-only arrays)

    def commit_select(self, run_id: str, request_id: str, read_version: int,
                      config: RunConfig, update: StateUpdate, answer: SelectResponse,
                      history: dict[str, Any], *, digest: str = "",
                      aliases: tuple[str, ...] = (),
                      max_staleness: int | None = None,
                      flat: FlatAnswer | None = None) -> CommitResult:
        with self._lock:
            run = self._require(run_id)
            stored = run.requests.get(request_id)
            if stored is not None:
                if stored[0] != "select":
                    raise Conflict("request_id", "already used by an outcome report")
                check_digest(request_id, stored[2], digest)
                return CommitResult(CommitStatus.REPLAY, stored[1])
            staleness = run.state_version - read_version
            if staleness < 0 or run.config != config or (
                    max_staleness is not None and staleness > max_staleness):
                return CommitResult(CommitStatus.STALE)
            try:
                folded = {t: fold_task(run.tasks.get(t), u, update.eta, update.bias_corrected,
                                       update.num_phases, update.window)
                          for t, u in update.tasks.items()}
            except ValueError as exc:
                raise InvalidArgument("run_id", f"run {clip(run_id)}: {exc}") from None
            run.tasks.update(folded)
            run.state_version += 1
            run.revision += 1
            answer = answer.model_copy(update={"state_version": run.state_version,
                                               "staleness": staleness})
            self._remember(run, request_id, ("select", answer, digest))
            self._register(run, (answer.selection_id, *aliases))
            run.history.append({**history, "state_version": run.state_version,
                                "staleness": staleness})
            return CommitResult(CommitStatus.COMMITTED, answer)

    def reconcile_select(self, run_id: str, request_id: str, counted: SelectResponse,
                         kept_delta: dict[str, np.ndarray], answer: SelectResponse,
                         history: dict[str, Any], *,
                         aliases: tuple[str, ...] = ()) -> CommitResult:
        with self._lock:
            run = self._require(run_id)
            stored = run.requests.get(request_id)
            if stored is None or stored[0] != "select":
                return CommitResult(CommitStatus.GONE)
            if stored[1] is not counted:
                return CommitResult(CommitStatus.CONFLICT)
            if any(t not in run.tasks for t in kept_delta):
                raise StoreUnavailable(f"run {clip(run_id)}: the state of a committed batch "
                                       "is missing; retry")
            for task, delta in kept_delta.items():
                state = run.tasks[task]
                run.tasks[task] = replace(state, chunks_kept=state.chunks_kept + delta)
            run.revision += 1
            run.requests[request_id] = ("select", answer, stored[2])
            self._register(run, (answer.selection_id, *aliases))
            run.history.append(history)
            return CommitResult(CommitStatus.COMMITTED)

    def record_report(self, run_id: str, request_id: str, report: OutcomeReport,
                      history: dict[str, Any], *, digest: str = "",
                      require_selection: bool = False) -> bool:
        with self._lock:
            run = self._require(run_id)
            stored = run.requests.get(request_id)
            if stored is not None:
                if stored[0] != "report":
                    raise Conflict("request_id", "already used by a select request")
                check_digest(request_id, stored[2], digest)
                return False
            if require_selection and report.selection_id not in run.selections:
                raise unknown_selection(run_id, report.selection_id)
            run.outcome_reports += 1
            self._remember(run, request_id, ("report", None, digest))
            run.history.append(history)
            return True

    def history(self, run_id: str, count: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            run = self._require(run_id)
            return list(run.history)[-count:] if count > 0 else []

    def export_state(self, run_id: str) -> dict[str, Any]:
        """The run's phase state as plain data (counters and each task's state in the stored
        binary format), for a trainer's checkpoint: `import_state` puts it back after a
        restart. Idempotency records and history are not part of it."""
        with self._lock:
            run = self._require(run_id)
            return {"state_version": run.state_version, "outcome_reports": run.outcome_reports,
                    "revision": run.revision,
                    "tasks": {t: encode_state(s) for t, s in run.tasks.items()}}

    def import_state(self, run_id: str, data: dict[str, Any]) -> None:
        """Replace the run's phase state with `export_state`'s data (the run must exist: its
        config comes from `put_config`); a malformed one raises ValueError, changing nothing."""
        try:
            tasks = {str(t): decode_state(bytes(raw)) for t, raw in data["tasks"].items()}
            counters = {k: int(data[k]) for k in ("state_version", "outcome_reports", "revision")}
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"not an exported run state: {exc!r}") from exc
        with self._lock:
            run = self._require(run_id)
            run.tasks = tasks
            run.state_version = counters["state_version"]
            run.outcome_reports = counters["outcome_reports"]
            run.revision = counters["revision"]

    def _require(self, run_id: str) -> _Run:
        run = self._runs.get(run_id)
        if run is None:
            raise NotFound(f"run {clip(run_id)} not found")
        return run

    def _remember(self, run: _Run, request_id: str, record: _Record) -> None:
        run.requests[request_id] = record
        while len(run.requests) > self._max_requests:
            run.requests.popitem(last=False)

    def _register(self, run: _Run, selection_ids: Iterable[str]) -> None:
        for selection_id in selection_ids:
            run.selections[selection_id] = None
            run.selections.move_to_end(selection_id)
        while len(run.selections) > self._max_requests:
            run.selections.popitem(last=False)


def unknown_selection(run_id: str, selection_id: str) -> NotFound:
    return NotFound(f"selection_id {clip(selection_id)} is not a selection of run "
                    f"{clip(run_id)} (unknown, or older than the idempotency records)",
                    field="selection_id")
