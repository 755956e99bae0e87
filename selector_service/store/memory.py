"""In-memory phase-state store: the embedded default. Thread-safe; state dies with the process."""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from selector_service.core import RunConfig, TaskState
from selector_service.errors import InvalidArgument, NotFound
from selector_service.models import OutcomeReport, SelectResponse
from selector_service.store.base import CommitResult, CommitStatus, RequestKind, RunSnapshot

MAX_REQUESTS_PER_RUN = 100_000  # idempotency records kept per run, oldest dropped first
MAX_HISTORY = 10_000


@dataclass
class _Run:
    config: RunConfig
    state_version: int = 0
    outcome_reports: int = 0
    tasks: dict[str, TaskState] = field(default_factory=dict)
    requests: OrderedDict[str, tuple[RequestKind, Any]] = field(default_factory=OrderedDict)
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))


def _copy_state(state: TaskState) -> TaskState:
    return replace(state, scores=state.scores.copy(), observations=state.observations.copy(),
                   chunks_total=state.chunks_total.copy(), chunks_kept=state.chunks_kept.copy(),
                   signal_ref=None if state.signal_ref is None else state.signal_ref.copy())


class MemoryStore:
    def __init__(self, max_requests_per_run: int = MAX_REQUESTS_PER_RUN) -> None:
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._max_requests = max_requests_per_run

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
            return RunSnapshot(run.config, run.state_version, run.outcome_reports, tasks)

    def get_request(self, run_id: str, request_id: str) -> tuple[RequestKind, Any] | None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or request_id not in run.requests:
                return None
            return run.requests[request_id]  # answers are immutable (frozen, read-only arrays)

    def commit_select(self, run_id: str, request_id: str, expected_version: int,
                      new_states: dict[str, TaskState], answer: SelectResponse,
                      history: dict[str, Any]) -> CommitResult:
        with self._lock:
            run = self._require(run_id)
            stored = run.requests.get(request_id)
            if stored is not None:
                if stored[0] != "select":
                    raise InvalidArgument("request_id", "already used by an outcome report")
                return CommitResult(CommitStatus.REPLAY, stored[1])
            if run.state_version != expected_version:
                return CommitResult(CommitStatus.CONFLICT)
            run.tasks.update({t: _copy_state(s) for t, s in new_states.items()})
            run.state_version = answer.state_version
            self._remember(run, request_id, ("select", answer))
            run.history.append(history)
            return CommitResult(CommitStatus.COMMITTED)

    def record_report(self, run_id: str, request_id: str, report: OutcomeReport,
                      history: dict[str, Any]) -> bool:
        with self._lock:
            run = self._require(run_id)
            stored = run.requests.get(request_id)
            if stored is not None:
                if stored[0] != "report":
                    raise InvalidArgument("request_id", "already used by a select request")
                return False
            run.outcome_reports += 1
            self._remember(run, request_id, ("report", None))
            run.history.append(history)
            return True

    def history(self, run_id: str, count: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            run = self._require(run_id)
            return list(run.history)[-count:] if count > 0 else []

    def _require(self, run_id: str) -> _Run:
        run = self._runs.get(run_id)
        if run is None:
            raise NotFound(f"run {run_id!r} not found")
        return run

    def _remember(self, run: _Run, request_id: str, record: tuple[RequestKind, Any]) -> None:
        run.requests[request_id] = record
        while len(run.requests) > self._max_requests:
            run.requests.popitem(last=False)
