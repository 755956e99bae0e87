"""What the remote clients (gRPC, HTTP; sync and asyncio) share: retries, the local fallback and
the replay log. The transports only move bytes; everything else is here.

Retries (tenacity, exponential backoff with jitter) happen only where a retry is safe: the
selector or its store is unavailable (gRPC UNAVAILABLE, HTTP 503) or the connection failed.
Select and report are idempotent on request_id, so resending after a lost reply counts nothing
twice. Bad input, unknown runs, conflicts and auth failures are never retried; a call that timed
out is not retried either (the timeout bounds the call; the fallback below still applies).

The rule that keeps the run's counts equal to what trainers trained on (docs/design.md,
"Phantom commits"; docs/operations.md): **every batch a trainer trains on is counted by the
service exactly once, with the masks the trainer trained on.** The replay log implements it:

- A batch selected locally (fallback, below) is logged *pending*. Once the service answers
  again, the client replays it: the same request_id and batch with ``trained_masks`` /
  ``trained_weights``. If the service never committed the request, it commits it now, counted
  with those masks; if it had (the client timed out, or the selector died after committing),
  it reconciles its stored answer and kept-chunk counts to those masks. A phantom commit (a
  mask nobody trained on) therefore never stays counted.
- A batch the service answered is logged *acknowledged* with the answer's ``store_epoch`` (the
  store's incarnation; the newest ``MAX_UNCONFIRMED`` such entries are kept). A store that
  comes back without its last acknowledged writes (a host crash with Redis AOF ``everysec``
  loses up to a second; so does a failover to a lagging replica; a SIGKILL of redis-server
  alone loses nothing, the AOF is written before the answer) answers under a new epoch, and
  the client replays every entry acknowledged under the old one that was not yet confirmed
  (the replay of a batch the store still has changes nothing). An entry is confirmed, and
  dropped, once an answer under the same epoch arrives for a request sent
  ``durable_after_s`` (3 s) or more after the entry was acknowledged: by then the store has
  synced it to disk.
- Outcome reports are logged the same way (pending while the service is unreachable, then
  acknowledged), after the selections they name, so they are replayed in order and each is
  counted once (the service dedupes on request_id).

Fallback (opt-in: ``fallback=True``). When the service stays unreachable after the retries
(``StoreUnavailable``, which includes connection failures and timeouts):

- ``select`` selects locally with ``select_with_keep_probs``: the run config and the newest keep
  probabilities this client saw (cached from every answer, ``put_run`` and ``get_run``). The
  answer's selection_id is ``local-<request_id>`` and its state_version the last one seen. A
  client that never saw the run's config raises the ``StoreUnavailable``.
- ``report_outcomes`` logs the report as pending and answers ``accepted``.

Pending entries are replayed in order on the next successful call, or by ``flush()``; an entry
leaves the log only after the service acknowledged it (and, for durability, confirmed it). An
entry the service rejects for good (bad input, unknown run or selection, conflict) is dropped
with an error log, so it cannot block the log. With ``queue_path`` pending entries are also
kept in a JSONL journal that survives a restart of the trainer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

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

from pcm_contract.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    PCMError,
    StoreUnavailable,
    clip,
    invalid_from_validation,
)
from pcm_contract.models import (
    LOCAL_SELECTION_PREFIX,
    DeleteAck,
    OutcomeAck,
    OutcomeReport,
    RunConfigBody,
    RunInfo,
    SelectRequest,
    SelectResponse,
    valid_run_id,
)
from selector_service.core import ChunkBatch, RunConfig, select_with_keep_probs

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

LOCAL_PREFIX = LOCAL_SELECTION_PREFIX
DURABLE_AFTER_S = 3.0  # AOF everysec fsyncs within ~1-2 s of a write
# Acknowledged entries kept for a replay at most (the oldest go first): bounds the memory of a
# client that selects many times a second (a trainer holds one or two within DURABLE_AFTER_S).
MAX_UNCONFIRMED = 16
# Rejections that no replay can fix: the entry is dropped (with an error log).
FINAL_ERRORS = (InvalidArgument, NotFound, Conflict)


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
    if not valid_run_id(run_id):
        raise InvalidArgument("run_id", f"{clip(run_id)} is not a valid run id "
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
# Replay log

Kind = Literal["select", "report"]


@dataclass
class LogEntry:
    """A select (with the masks trained on) or a report, pending or acknowledged."""

    run_id: str
    kind: Kind
    request: Any  # SelectRequest (with trained_masks / trained_weights) or OutcomeReport
    epoch: str | None = None  # the store epoch it was acknowledged under; None: pending
    acked_at: float = 0.0  # monotonic time of the acknowledgement

    @property
    def key(self) -> str:
        return f"{self.run_id}/{self.kind}/{self.request.request_id}"

    @property
    def pending(self) -> bool:
        return self.epoch is None


class ReplayLog:
    """The client's log of selects and reports (see the module docstring), in order,
    optionally journaled to a JSONL file (``{"op": "add", "key", "run_id", "kind", "request"}``
    / ``{"op": "done", "key"}`` lines, for pending entries; truncated once none is pending).
    Thread-safe."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 durable_after_s: float = DURABLE_AFTER_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path) if path is not None else None
        self.durable_after_s = durable_after_s
        self.clock = clock
        self._entries: OrderedDict[str, LogEntry] = OrderedDict()
        self._lock = threading.Lock()
        if self.path is not None:
            self._load(self.path)

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for e in self._entries.values() if e.pending)

    def pending(self) -> list[LogEntry]:
        with self._lock:
            return [e for e in self._entries.values() if e.pending]

    def pending_reports(self) -> int:
        with self._lock:
            return sum(1 for e in self._entries.values() if e.pending and e.kind == "report")

    def entries(self) -> list[LogEntry]:
        with self._lock:
            return list(self._entries.values())

    def add_pending(self, run_id: str, kind: Kind, request: Any) -> None:
        entry = LogEntry(run_id, kind, request)
        with self._lock:
            if entry.key in self._entries and self._entries[entry.key].pending:
                return
            self._entries[entry.key] = entry
            self._entries.move_to_end(entry.key)
            self._journal_add(entry)

    def add_acked(self, run_id: str, kind: Kind, request: Any, epoch: str) -> None:
        entry = LogEntry(run_id, kind, request, epoch, self.clock())
        with self._lock:
            previous = self._entries.get(entry.key)
            if previous is not None and previous.pending:
                self._journal({"op": "done", "key": entry.key})
            self._entries[entry.key] = entry
            self._entries.move_to_end(entry.key)
            self._bound()
            self._truncate_if_idle()

    def acked(self, entry: LogEntry, epoch: str) -> None:
        with self._lock:
            if self._entries.get(entry.key) is not entry:
                return
            was_pending = entry.pending
            entry.epoch, entry.acked_at = epoch, self.clock()
            if was_pending:
                self._journal({"op": "done", "key": entry.key})
            self._truncate_if_idle()

    def drop(self, entry: LogEntry) -> None:
        with self._lock:
            if self._entries.get(entry.key) is not entry:
                return
            del self._entries[entry.key]
            if entry.pending:
                self._journal({"op": "done", "key": entry.key})
            self._truncate_if_idle()

    def forget_run(self, run_id: str) -> None:
        for entry in self.entries():
            if entry.run_id == run_id:
                self.drop(entry)

    def observe(self, epoch: str, sent_at: float) -> bool:
        """An answer under `epoch` to a request sent at `sent_at`: entries acknowledged under
        another epoch become pending again (the store restarted and may have lost them);
        entries acknowledged under this one at least durable_after_s before `sent_at` are
        confirmed and dropped. True if something is pending."""
        with self._lock:
            for key, entry in list(self._entries.items()):
                if entry.pending:
                    continue
                if epoch and entry.epoch and entry.epoch != epoch:
                    log.warning("the selector's store restarted (epoch %s -> %s): replaying "
                                "%s %s", entry.epoch, epoch, entry.kind, entry.key)
                    entry.epoch = None
                    self._journal_add(entry)
                elif sent_at >= entry.acked_at + self.durable_after_s:
                    del self._entries[key]
            return any(e.pending for e in self._entries.values())

    def _bound(self) -> None:
        acked = [k for k, e in self._entries.items() if not e.pending]
        for key in acked[:max(0, len(acked) - MAX_UNCONFIRMED)]:
            del self._entries[key]

    def newest_ack(self) -> float | None:
        with self._lock:
            acked = [e.acked_at for e in self._entries.values() if not e.pending]
            return max(acked) if acked else None

    # -- journal ------------------------------------------------------------------------------

    def _journal_add(self, entry: LogEntry) -> None:
        if self.path is not None:
            self._journal({"op": "add", "key": entry.key, "run_id": entry.run_id,
                           "kind": entry.kind, "request": entry.request.model_dump(mode="json")})

    def _journal(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _truncate_if_idle(self) -> None:
        if self.path is not None and not any(e.pending for e in self._entries.values()):
            self.path.write_bytes(b"")

    def _load(self, path: Path) -> None:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            return
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                record = json.loads(line)
                if record["op"] == "add":
                    kind = record.get("kind", "report")
                    raw = record["request"] if "request" in record else record["report"]
                    model = SelectRequest if kind == "select" else OutcomeReport
                    entry = LogEntry(record["run_id"], kind, model.model_validate(raw))
                    self._entries[entry.key] = entry
                else:
                    key = record["key"]
                    if key.count("/") == 1:  # journals of older clients: RUN/REQUEST_ID
                        run_id, _, request_id = key.partition("/")
                        key = f"{run_id}/report/{request_id}"
                    self._entries.pop(key, None)
            except (ValueError, KeyError, TypeError, ValidationError):
                log.warning("%s:%d: skipping an unreadable replay-log line", path, line_no)


def trained(request: SelectRequest, answer: SelectResponse) -> SelectRequest:
    """The request as a replay of what the client trained on: the answer's masks and weights."""
    return request.model_copy(update={"trained_masks": list(answer.masks),
                                      "trained_weights": list(answer.weights)})


# ---------------------------------------------------------------------------------------------
# Local fallback


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


def _drop_for_good(entry: LogEntry, exc: PCMError) -> None:
    log.error("dropping logged %s %s: the selector rejected it (%s)", entry.kind, entry.key, exc)


# ---------------------------------------------------------------------------------------------
# The clients' shared behaviour


class _Options:
    """Constructor options common to every remote client."""

    def __init__(self, url: str, *, timeout_s: float, retries: int, backoff_s: float,
                 max_backoff_s: float, fallback: bool,
                 queue_path: str | os.PathLike[str] | None,
                 durable_after_s: float = DURABLE_AFTER_S) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if durable_after_s < 0:
            raise ValueError(f"durable_after_s must be >= 0, got {durable_after_s}")
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
        self.fallback: LocalFallback | None = LocalFallback() if fallback else None
        self.log = ReplayLog(queue_path, durable_after_s=durable_after_s)
        self._flush_lock = self._new_lock()

    @staticmethod
    def _new_lock() -> Any:
        raise NotImplementedError

    @property
    def pending_reports(self) -> int:
        """Outcome reports waiting to be delivered to the service."""
        return self.log.pending_reports()

    @property
    def pending(self) -> int:
        """Selects and reports waiting to be (re)delivered to the service."""
        return len(self.log)

    def _settle_delay(self) -> float:
        newest = self.log.newest_ack()
        if newest is None:
            return 0.0
        return max(0.0, newest + self.log.durable_after_s - self.log.clock())

    def _local(self, run_id: str, req: SelectRequest, exc: StoreUnavailable) -> SelectResponse:
        assert self.fallback is not None
        local = self.fallback.select(run_id, req, exc)
        self.log.add_pending(run_id, "select", trained(req, local))
        return local


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
        sent = self.log.clock()
        info = self._retrying(self._put_run, run_id, changes)
        self._on_run(info, sent)
        return info

    def get_run(self, run_id: str) -> RunInfo:
        sent = self.log.clock()
        info = self._retrying(self._get_run, check_run_id(run_id))
        self._on_run(info, sent)
        return info

    def delete_run(self, run_id: str) -> DeleteAck:
        ack = self._retrying(self._delete_run, check_run_id(run_id))
        if self.fallback is not None:
            self.fallback.forget(run_id)
        self.log.forget_run(run_id)
        return ack

    def select(self, run_id: str,
               request: SelectRequest | Mapping[str, Any]) -> SelectResponse:
        check_run_id(run_id)
        req = parse(SelectRequest, request)
        sent = self.log.clock()
        try:
            answer = check_aligned(req, self._retrying(self._select, run_id, req))
        except StoreUnavailable as exc:
            if self.fallback is None:
                raise
            return self._local(run_id, req, exc)
        self.log.add_acked(run_id, "select", trained(req, answer), answer.store_epoch)
        if self.fallback is not None:
            if not self.fallback.knows(run_id):  # learn the config for a later fallback
                try:
                    self.fallback.observe_run(self._get_run(run_id))
                except PCMError as exc:
                    log.info("could not fetch run %s for the local fallback: %s", run_id, exc)
            self.fallback.observe_answer(run_id, answer)
        self._after_answer(answer.store_epoch, sent)
        return answer

    def report_outcomes(self, run_id: str,
                        report: OutcomeReport | Mapping[str, Any]) -> OutcomeAck:
        check_run_id(run_id)
        rep = parse(OutcomeReport, report)
        if len(self.log):  # earlier entries first: a report may name a logged selection
            self.flush()
            if len(self.log) and self.fallback is not None:  # still unreachable: keep order
                self.log.add_pending(run_id, "report", rep)
                return OutcomeAck(accepted=True)
        sent = self.log.clock()
        try:
            ack = self._retrying(self._report, run_id, rep)
        except StoreUnavailable as exc:
            if self.fallback is None:
                raise
            log.warning("selector unreachable (%s): logged outcome report %s for later", exc,
                        rep.request_id)
            self.log.add_pending(run_id, "report", rep)
            return OutcomeAck(accepted=True)
        self.log.add_acked(run_id, "report", rep, ack.store_epoch)
        self._after_answer(ack.store_epoch, sent)
        return ack

    def flush(self) -> int:
        """Send the pending entries in order; returns how many outcome reports the service
        acknowledged. Stops at the first that cannot be delivered now (the rest stay)."""
        reports = 0
        with self._flush_lock:
            while True:
                pending = self.log.pending()
                if not pending:
                    break
                entry = pending[0]
                sent = self.log.clock()
                try:
                    if entry.kind == "select":
                        epoch = self._retrying(self._select, entry.run_id,
                                               entry.request).store_epoch
                    else:
                        epoch = self._retrying(self._report, entry.run_id,
                                               entry.request).store_epoch
                except FINAL_ERRORS as exc:
                    _drop_for_good(entry, exc)
                    self.log.drop(entry)
                    continue
                except PCMError as exc:  # unreachable, or a failure a later flush may fix
                    log.info("could not replay %s %s now: %s", entry.kind, entry.key, exc)
                    break
                reports += entry.kind == "report"
                self.log.acked(entry, epoch)
                self.log.observe(epoch, sent)
        return reports

    def settle(self, run_id: str) -> None:
        """Wait until what the service acknowledged last is durable, then check with the
        service (one get_run) and replay whatever its store lost. Call before exiting."""
        delay = self._settle_delay()
        if delay:
            time.sleep(delay)
        self.get_run(run_id)
        self.flush()

    # -- internals ----------------------------------------------------------------------------

    def _retrying(self, fn: Callable[..., T], *args: Any) -> T:
        return Retrying(**self._retry_args)(fn, *args)

    def _on_run(self, info: RunInfo, sent: float) -> None:
        if self.fallback is not None:
            self.fallback.observe_run(info)
        self._after_answer(info.store_epoch, sent)

    def _after_answer(self, epoch: str, sent: float) -> None:
        if self.log.observe(epoch, sent) and not self._flush_lock.locked():
            try:
                self.flush()
            except PCMError as exc:
                log.warning("could not replay logged entries: %s", exc)

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
        sent = self.log.clock()
        info = await self._retrying(self._put_run, run_id, changes)
        await self._on_run(info, sent)
        return info

    async def get_run(self, run_id: str) -> RunInfo:
        sent = self.log.clock()
        info = await self._retrying(self._get_run, check_run_id(run_id))
        await self._on_run(info, sent)
        return info

    async def delete_run(self, run_id: str) -> DeleteAck:
        ack = await self._retrying(self._delete_run, check_run_id(run_id))
        if self.fallback is not None:
            self.fallback.forget(run_id)
        self.log.forget_run(run_id)
        return ack

    async def select(self, run_id: str,
                     request: SelectRequest | Mapping[str, Any]) -> SelectResponse:
        check_run_id(run_id)
        req = parse(SelectRequest, request)
        sent = self.log.clock()
        try:
            answer = check_aligned(req, await self._retrying(self._select, run_id, req))
        except StoreUnavailable as exc:
            if self.fallback is None:
                raise
            return self._local(run_id, req, exc)
        self.log.add_acked(run_id, "select", trained(req, answer), answer.store_epoch)
        if self.fallback is not None:
            if not self.fallback.knows(run_id):
                try:
                    self.fallback.observe_run(await self._get_run(run_id))
                except PCMError as exc:
                    log.info("could not fetch run %s for the local fallback: %s", run_id, exc)
            self.fallback.observe_answer(run_id, answer)
        await self._after_answer(answer.store_epoch, sent)
        return answer

    async def report_outcomes(self, run_id: str,
                              report: OutcomeReport | Mapping[str, Any]) -> OutcomeAck:
        check_run_id(run_id)
        rep = parse(OutcomeReport, report)
        if len(self.log):
            await self.flush()
            if len(self.log) and self.fallback is not None:
                self.log.add_pending(run_id, "report", rep)
                return OutcomeAck(accepted=True)
        sent = self.log.clock()
        try:
            ack = await self._retrying(self._report, run_id, rep)
        except StoreUnavailable as exc:
            if self.fallback is None:
                raise
            log.warning("selector unreachable (%s): logged outcome report %s for later", exc,
                        rep.request_id)
            self.log.add_pending(run_id, "report", rep)
            return OutcomeAck(accepted=True)
        self.log.add_acked(run_id, "report", rep, ack.store_epoch)
        await self._after_answer(ack.store_epoch, sent)
        return ack

    async def flush(self) -> int:
        """Send the pending entries in order; see RemoteClient.flush."""
        reports = 0
        async with self._flush_lock:
            while True:
                pending = self.log.pending()
                if not pending:
                    break
                entry = pending[0]
                sent = self.log.clock()
                try:
                    if entry.kind == "select":
                        epoch = (await self._retrying(self._select, entry.run_id,
                                                      entry.request)).store_epoch
                    else:
                        epoch = (await self._retrying(self._report, entry.run_id,
                                                      entry.request)).store_epoch
                except FINAL_ERRORS as exc:
                    _drop_for_good(entry, exc)
                    self.log.drop(entry)
                    continue
                except PCMError as exc:
                    log.info("could not replay %s %s now: %s", entry.kind, entry.key, exc)
                    break
                reports += entry.kind == "report"
                self.log.acked(entry, epoch)
                self.log.observe(epoch, sent)
        return reports

    async def settle(self, run_id: str) -> None:
        """See RemoteClient.settle."""
        delay = self._settle_delay()
        if delay:
            await asyncio.sleep(delay)
        await self.get_run(run_id)
        await self.flush()

    async def _retrying(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await AsyncRetrying(**self._retry_args)(fn, *args)

    async def _on_run(self, info: RunInfo, sent: float) -> None:
        if self.fallback is not None:
            self.fallback.observe_run(info)
        await self._after_answer(info.store_epoch, sent)

    async def _after_answer(self, epoch: str, sent: float) -> None:
        if self.log.observe(epoch, sent) and not self._flush_lock.locked():
            try:
                await self.flush()
            except PCMError as exc:
                log.warning("could not replay logged entries: %s", exc)

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
