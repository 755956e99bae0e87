"""What the remote clients (gRPC, HTTP; sync and asyncio) share: retries, the local fallback and
the outcome-report queue. The transports only move bytes; everything else is here.

Retries (tenacity, exponential backoff with jitter) happen only where a retry is safe: the
selector or its store is unavailable (gRPC UNAVAILABLE, HTTP 503) or the connection failed.
Select and report are idempotent on request_id, so resending after a lost reply counts nothing
twice. Bad input, unknown runs and auth failures are never retried; a call that timed out is
not retried either (the timeout bounds the call; the fallback below still applies).

Fallback (opt-in: ``fallback=True``). When the service stays unreachable after the retries
(``StoreUnavailable``, which includes connection failures and timeouts):

- ``select`` selects locally with ``select_with_keep_probs``: the run config and the newest keep
  probabilities this client saw (cached from every answer, ``put_run`` and ``get_run``). The
  answer's selection_id is ``local-<request_id>`` and its state_version the last one seen. A
  local selection updates no phase state: the service never sees that batch. A client that never
  saw the run's config raises the ``StoreUnavailable``.
- ``report_outcomes`` queues the report (in memory; with ``queue_path`` also in a JSONL journal
  that survives a restart of the trainer) and answers ``accepted``. Queued reports are replayed
  in order on the next successful call, or by ``flush()``, each exactly once: an entry leaves
  the queue only after the service acknowledged it (the service dedupes on request_id, so a
  replay after a lost reply is safe). An entry the service rejects for good (bad input, unknown
  run) is dropped with a warning, so it cannot block the queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from selector_service.core import ChunkBatch, RunConfig, select_with_keep_probs
from selector_service.errors import InvalidArgument, NotFound, PCMError, StoreUnavailable
from selector_service.models import (
    RUN_ID_PATTERN,
    DeleteAck,
    OutcomeAck,
    OutcomeReport,
    RunConfigBody,
    RunInfo,
    SelectRequest,
    SelectResponse,
)
from selector_service.service import invalid_from_validation

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

LOCAL_PREFIX = "local-"
_RUN_ID = re.compile(RUN_ID_PATTERN)


class SelectorUnreachable(StoreUnavailable):
    """The selector could not be reached (connection refused or reset). Retrying is safe."""


class SelectorTimeout(StoreUnavailable):
    """The selector did not answer within the client's timeout. Not retried."""


def retryable(exc: BaseException) -> bool:
    return isinstance(exc, StoreUnavailable) and not isinstance(exc, SelectorTimeout)


# ---------------------------------------------------------------------------------------------
# Input parsing: the same models (and errors) as the embedded selector


def parse(model: type[M], value: M | Mapping[str, Any]) -> M:
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise InvalidArgument("run_id", f"{run_id!r} is not a valid run id "
                                        "(1-64 chars: letters, digits, '.', '_', '-')")
    return run_id


def check_aligned(request: SelectRequest, answer: SelectResponse) -> SelectResponse:
    """The answer's masks and weights line up with the submitted trajectories."""
    lengths = [t.phase_ids.shape[0] for t in request.trajectories]
    if ([m.shape[0] for m in answer.masks] != lengths
            or [w.shape[0] for w in answer.weights] != lengths):
        raise PCMError("the selector's answer does not line up with the submitted trajectories")
    return answer


# ---------------------------------------------------------------------------------------------
# Report queue


@dataclass(frozen=True)
class QueuedReport:
    run_id: str
    report: OutcomeReport

    @property
    def key(self) -> str:
        return f"{self.run_id}/{self.report.request_id}"


class ReportQueue:
    """FIFO of outcome reports waiting for the service, optionally journaled to a JSONL file
    (``{"op": "add", "run_id", "report"}`` / ``{"op": "done", "key"}`` lines; truncated once
    empty). Thread-safe. A report already queued (same run and request_id) is not queued twice.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: OrderedDict[str, QueuedReport] = OrderedDict()
        self._lock = threading.Lock()
        if self.path is not None:
            self._load(self.path)

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[QueuedReport]:
        with self._lock:
            return list(self._entries.values())

    def append(self, run_id: str, report: OutcomeReport) -> None:
        entry = QueuedReport(run_id, report)
        with self._lock:
            if entry.key in self._entries:
                return
            self._entries[entry.key] = entry
            self._journal({"op": "add", "run_id": run_id,
                           "report": report.model_dump(mode="json")})

    def remove(self, entry: QueuedReport) -> None:
        with self._lock:
            if self._entries.pop(entry.key, None) is None:
                return
            if self._entries:
                self._journal({"op": "done", "key": entry.key})
            elif self.path is not None:
                self.path.write_bytes(b"")

    def _journal(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _load(self, path: Path) -> None:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            return
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                record = json.loads(line)
                if record["op"] == "add":
                    entry = QueuedReport(record["run_id"],
                                         OutcomeReport.model_validate(record["report"]))
                    self._entries.setdefault(entry.key, entry)
                else:
                    self._entries.pop(record["key"], None)
            except (ValueError, KeyError, TypeError, ValidationError):
                log.warning("%s:%d: skipping an unreadable report-queue line", path, line_no)


# ---------------------------------------------------------------------------------------------
# Local fallback


@dataclass
class _SeenRun:
    config: RunConfig
    state_version: int = 0
    keep_probs: dict[str, list[float]] = field(default_factory=dict)


class LocalFallback:
    """What a client saw of each run, local selection from it, and the report queue."""

    def __init__(self, queue_path: str | os.PathLike[str] | None = None) -> None:
        self.queue = ReportQueue(queue_path)
        self._runs: dict[str, _SeenRun] = {}

    def knows(self, run_id: str) -> bool:
        return run_id in self._runs

    def observe_run(self, info: RunInfo) -> None:
        seen = _SeenRun(RunConfig(**info.config.model_dump()), info.state_version,
                        {t: list(s.keep_probs) for t, s in info.tasks.items()})
        self._runs[info.run_id] = seen

    def observe_answer(self, run_id: str, answer: SelectResponse) -> None:
        seen = self._runs.get(run_id)
        if seen is None or answer.selection_id.startswith(LOCAL_PREFIX):
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
            selection_id=LOCAL_PREFIX + request.request_id,
            state_version=seen.state_version,
            masks=batch.split(sel.mask),
            weights=batch.split(sel.weight),
            kept_chunks=sel.kept_chunks,
            total_chunks=sel.total_chunks,
            skipped_trajectories=sel.skipped_trajectories,
            keep_probs={t: w.tolist() for t, w in sel.keep_probs.items()},
        )


def _drop_for_good(entry: QueuedReport, exc: PCMError) -> None:
    log.error("dropping queued outcome report %s: the selector rejected it (%s)", entry.key, exc)


# ---------------------------------------------------------------------------------------------
# The clients' shared behaviour


class _Options:
    """Constructor options common to every remote client."""

    def __init__(self, url: str, *, timeout_s: float, retries: int, backoff_s: float,
                 max_backoff_s: float, fallback: bool,
                 queue_path: str | os.PathLike[str] | None) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self._retry_args: dict[str, Any] = dict(
            stop=stop_after_attempt(retries + 1),
            wait=(wait_exponential(multiplier=backoff_s, max=max_backoff_s)
                  + wait_random(0, backoff_s)),
            retry=retry_if_exception(retryable),
            reraise=True,
            before_sleep=_log_retry,
        )
        if queue_path is not None and not fallback:
            raise ValueError("queue_path needs fallback=True")
        self.fallback: LocalFallback | None = LocalFallback(queue_path) if fallback else None
        self._flush_lock = self._new_lock()

    @staticmethod
    def _new_lock() -> Any:
        raise NotImplementedError

    @property
    def pending_reports(self) -> int:
        """Outcome reports queued for the service (0 without fallback)."""
        return 0 if self.fallback is None else len(self.fallback.queue)


def _log_retry(state: Any) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    log.info("selector call failed (%s); retry %d", exc, state.attempt_number)


class RemoteClient(_Options):
    """The SelectorClient methods over transport hooks (``_put_run`` ... ``_report``) that send
    one request and raise the project's exceptions."""

    _new_lock = staticmethod(threading.Lock)

    # -- transport hooks ----------------------------------------------------------------------

    def _put_run(self, run_id: str, changes: dict[str, Any]) -> RunInfo:
        raise NotImplementedError

    def _get_run(self, run_id: str) -> RunInfo:
        raise NotImplementedError

    def _delete_run(self, run_id: str) -> DeleteAck:
        raise NotImplementedError

    def _select(self, run_id: str, request: SelectRequest) -> SelectResponse:
        raise NotImplementedError

    def _report(self, run_id: str, report: OutcomeReport) -> OutcomeAck:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- SelectorClient -----------------------------------------------------------------------

    def put_run(self, run_id: str, **config: Any) -> RunInfo:
        check_run_id(run_id)
        changes = parse(RunConfigBody, config).changes()
        info = self._retrying(self._put_run, run_id, changes)
        self._on_run(info)
        return info

    def get_run(self, run_id: str) -> RunInfo:
        info = self._retrying(self._get_run, check_run_id(run_id))
        self._on_run(info)
        return info

    def delete_run(self, run_id: str) -> DeleteAck:
        ack = self._retrying(self._delete_run, check_run_id(run_id))
        if self.fallback is not None:
            self.fallback.forget(run_id)
        self._after_success()
        return ack

    def select(self, run_id: str,
               request: SelectRequest | Mapping[str, Any]) -> SelectResponse:
        check_run_id(run_id)
        req = parse(SelectRequest, request)
        try:
            answer = check_aligned(req, self._retrying(self._select, run_id, req))
        except StoreUnavailable as exc:
            if self.fallback is None:
                raise
            return self.fallback.select(run_id, req, exc)
        if self.fallback is not None:
            if not self.fallback.knows(run_id):  # learn the config for a later fallback
                try:
                    self.fallback.observe_run(self._get_run(run_id))
                except PCMError as exc:
                    log.info("could not fetch run %s for the local fallback: %s", run_id, exc)
            self.fallback.observe_answer(run_id, answer)
        self._after_success()
        return answer

    def report_outcomes(self, run_id: str,
                        report: OutcomeReport | Mapping[str, Any]) -> OutcomeAck:
        check_run_id(run_id)
        rep = parse(OutcomeReport, report)
        if self.fallback is None:
            return self._retrying(self._report, run_id, rep)
        if self.fallback.queue:
            self.flush()
            if self.fallback.queue:  # still unreachable: keep the order, queue behind
                self.fallback.queue.append(run_id, rep)
                return OutcomeAck(accepted=True)
        try:
            return self._retrying(self._report, run_id, rep)
        except StoreUnavailable as exc:
            log.warning("selector unreachable (%s): queued outcome report %s", exc,
                        rep.request_id)
            self.fallback.queue.append(run_id, rep)
            return OutcomeAck(accepted=True)

    def flush(self) -> int:
        """Send the queued outcome reports in order; returns how many the service acknowledged.
        Stops at the first that cannot be delivered now (the rest stay queued)."""
        if self.fallback is None:
            return 0
        sent = 0
        with self._flush_lock:
            for entry in self.fallback.queue.entries():
                try:
                    self._retrying(self._report, entry.run_id, entry.report)
                except StoreUnavailable:
                    break
                except (InvalidArgument, NotFound) as exc:
                    _drop_for_good(entry, exc)
                else:
                    sent += 1
                self.fallback.queue.remove(entry)
        return sent

    # -- internals ----------------------------------------------------------------------------

    def _retrying(self, fn: Callable[..., T], *args: Any) -> T:
        return Retrying(**self._retry_args)(fn, *args)

    def _on_run(self, info: RunInfo) -> None:
        if self.fallback is not None:
            self.fallback.observe_run(info)
        self._after_success()

    def _after_success(self) -> None:
        if self.fallback is not None and self.fallback.queue and not self._flush_lock.locked():
            try:
                self.flush()
            except PCMError as exc:
                log.warning("could not replay queued outcome reports: %s", exc)

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRemoteClient(_Options):
    """The asyncio twin of RemoteClient: the same methods as coroutines."""

    _new_lock = staticmethod(asyncio.Lock)

    async def _put_run(self, run_id: str, changes: dict[str, Any]) -> RunInfo:
        raise NotImplementedError

    async def _get_run(self, run_id: str) -> RunInfo:
        raise NotImplementedError

    async def _delete_run(self, run_id: str) -> DeleteAck:
        raise NotImplementedError

    async def _select(self, run_id: str, request: SelectRequest) -> SelectResponse:
        raise NotImplementedError

    async def _report(self, run_id: str, report: OutcomeReport) -> OutcomeAck:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def put_run(self, run_id: str, **config: Any) -> RunInfo:
        check_run_id(run_id)
        changes = parse(RunConfigBody, config).changes()
        info = await self._retrying(self._put_run, run_id, changes)
        await self._on_run(info)
        return info

    async def get_run(self, run_id: str) -> RunInfo:
        info = await self._retrying(self._get_run, check_run_id(run_id))
        await self._on_run(info)
        return info

    async def delete_run(self, run_id: str) -> DeleteAck:
        ack = await self._retrying(self._delete_run, check_run_id(run_id))
        if self.fallback is not None:
            self.fallback.forget(run_id)
        await self._after_success()
        return ack

    async def select(self, run_id: str,
                     request: SelectRequest | Mapping[str, Any]) -> SelectResponse:
        check_run_id(run_id)
        req = parse(SelectRequest, request)
        try:
            answer = check_aligned(req, await self._retrying(self._select, run_id, req))
        except StoreUnavailable as exc:
            if self.fallback is None:
                raise
            return self.fallback.select(run_id, req, exc)
        if self.fallback is not None:
            if not self.fallback.knows(run_id):
                try:
                    self.fallback.observe_run(await self._get_run(run_id))
                except PCMError as exc:
                    log.info("could not fetch run %s for the local fallback: %s", run_id, exc)
            self.fallback.observe_answer(run_id, answer)
        await self._after_success()
        return answer

    async def report_outcomes(self, run_id: str,
                              report: OutcomeReport | Mapping[str, Any]) -> OutcomeAck:
        check_run_id(run_id)
        rep = parse(OutcomeReport, report)
        if self.fallback is None:
            return await self._retrying(self._report, run_id, rep)
        if self.fallback.queue:
            await self.flush()
            if self.fallback.queue:
                self.fallback.queue.append(run_id, rep)
                return OutcomeAck(accepted=True)
        try:
            return await self._retrying(self._report, run_id, rep)
        except StoreUnavailable as exc:
            log.warning("selector unreachable (%s): queued outcome report %s", exc,
                        rep.request_id)
            self.fallback.queue.append(run_id, rep)
            return OutcomeAck(accepted=True)

    async def flush(self) -> int:
        """Send the queued outcome reports in order; see RemoteClient.flush."""
        if self.fallback is None:
            return 0
        sent = 0
        async with self._flush_lock:
            for entry in self.fallback.queue.entries():
                try:
                    await self._retrying(self._report, entry.run_id, entry.report)
                except StoreUnavailable:
                    break
                except (InvalidArgument, NotFound) as exc:
                    _drop_for_good(entry, exc)
                else:
                    sent += 1
                self.fallback.queue.remove(entry)
        return sent

    async def _retrying(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await AsyncRetrying(**self._retry_args)(fn, *args)

    async def _on_run(self, info: RunInfo) -> None:
        if self.fallback is not None:
            self.fallback.observe_run(info)
        await self._after_success()

    async def _after_success(self) -> None:
        if self.fallback is not None and self.fallback.queue and not self._flush_lock.locked():
            try:
                await self.flush()
            except PCMError as exc:
                log.warning("could not replay queued outcome reports: %s", exc)

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
