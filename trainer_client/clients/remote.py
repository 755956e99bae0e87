"""What the remote clients (gRPC, HTTP) share: the SelectorClient methods over five transport
hooks that each send one request. The transports only move bytes; the rest is here, once:

- input checks: the same models and errors as the embedded selector;
- retries where a retry is safe (retry.py); select and report are idempotent on request_id;
- the replay log (replay_log.py): every batch a trainer trains on is counted by the service
  exactly once, with the masks it trained on, across timeouts, selector restarts and store
  restarts;
- the local fallback (local.py, opt-in): select locally, and log outcome reports as pending,
  while the service stays unreachable.

The asyncio clients (aio.py) run these methods in worker threads, so this is the only
implementation of the logic.
"""

from __future__ import annotations

import abc
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any, Self

from pcm_contract.errors import (
    InvalidArgument,
    PCMError,
    StoreUnavailable,
    clip,
)
from pcm_contract.models import (
    DeleteAck,
    OutcomeAck,
    OutcomeReport,
    RunConfigBody,
    RunInfo,
    SelectRequest,
    SelectResponse,
    parse,
    valid_run_id,
)
from trainer_client.clients.errors import FINAL_ERRORS
from trainer_client.clients.local import LocalFallback
from trainer_client.clients.replay_log import DURABLE_AFTER_S, LogEntry, ReplayLog, trained
from trainer_client.clients.retry import RetryPolicy

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------------------------------
# Input checks: the same models (and errors) as the embedded selector




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
# The client


class RemoteClient(abc.ABC):
    """The SelectorClient methods over transport hooks (``_put_run`` ... ``_report``) that send
    one request and raise the project's exceptions. Thread-safe when the transport is."""

    def __init__(self, url: str, *, timeout_s: float = 10.0, retries: int = 4,
                 backoff_s: float = 0.1, max_backoff_s: float = 2.0, fallback: bool = False,
                 queue_path: str | os.PathLike[str] | None = None,
                 durable_after_s: float = DURABLE_AFTER_S) -> None:
        """timeout_s bounds each attempt; retries, backoff_s, max_backoff_s: see RetryPolicy;
        fallback: select locally while the service stays unreachable (local.py); queue_path:
        journal pending replays to this file (needs fallback); durable_after_s: how long after
        an acknowledgement the store has surely synced it (replay_log.py)."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if durable_after_s < 0:
            raise ValueError(f"durable_after_s must be >= 0, got {durable_after_s}")
        if queue_path is not None and not fallback:
            raise ValueError("queue_path needs fallback=True")
        self.url = url
        self.timeout_s = timeout_s
        self.retry = RetryPolicy(retries, backoff_s, max_backoff_s)
        self.fallback: LocalFallback | None = LocalFallback() if fallback else None
        self.log = ReplayLog(queue_path, durable_after_s=durable_after_s)
        self._flush_lock = threading.Lock()

    # -- transport hooks: one request each, no retries ----------------------------------------

    @abc.abstractmethod
    def _put_run(self, run_id: str, changes: dict[str, Any]) -> RunInfo: ...

    @abc.abstractmethod
    def _get_run(self, run_id: str) -> RunInfo: ...

    @abc.abstractmethod
    def _delete_run(self, run_id: str) -> DeleteAck: ...

    @abc.abstractmethod
    def _select(self, run_id: str, request: SelectRequest) -> SelectResponse: ...

    @abc.abstractmethod
    def _report(self, run_id: str, report: OutcomeReport) -> OutcomeAck: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- SelectorClient -----------------------------------------------------------------------

    @property
    def pending_reports(self) -> int:
        """Outcome reports waiting to be delivered to the service."""
        return self.log.pending_reports()

    @property
    def pending(self) -> int:
        """Selects and reports waiting to be (re)delivered to the service."""
        return len(self.log)

    def put_run(self, run_id: str, **config: Any) -> RunInfo:
        check_run_id(run_id)
        changes = parse(RunConfigBody, config).changes()
        sent = self.log.clock()
        info = self.retry.call(self._put_run, run_id, changes)
        self._on_run(info, sent)
        return info

    def get_run(self, run_id: str) -> RunInfo:
        sent = self.log.clock()
        info = self.retry.call(self._get_run, check_run_id(run_id))
        self._on_run(info, sent)
        return info

    def delete_run(self, run_id: str) -> DeleteAck:
        ack = self.retry.call(self._delete_run, check_run_id(run_id))
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
            answer = check_aligned(req, self.retry.call(self._select, run_id, req))
        except StoreUnavailable as exc:
            if self.fallback is None:
                raise
            local = self.fallback.select(run_id, req, exc)
            self.log.add_pending(run_id, "select", trained(req, local))
            return local
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
            ack = self.retry.call(self._report, run_id, rep)
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
        acknowledged. Stops at the first that cannot be delivered now (the rest stay); drops,
        with an error log, one the service rejects for good (so it cannot block the log)."""
        reports = 0
        with self._flush_lock:
            while True:
                pending = self.log.pending()
                if not pending:
                    break
                entry = pending[0]
                sent = self.log.clock()
                try:
                    epoch = self._replay(entry)
                except FINAL_ERRORS as exc:
                    log.error("dropping logged %s %s: the selector rejected it (%s)",
                              entry.kind, entry.key, exc)
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
        newest = self.log.newest_ack()
        if newest is not None:
            delay = newest + self.log.durable_after_s - self.log.clock()
            if delay > 0:
                time.sleep(delay)
        self.get_run(run_id)
        self.flush()

    # -- internals ----------------------------------------------------------------------------

    def _replay(self, entry: LogEntry) -> str:
        """Send a logged entry again; the store epoch it was acknowledged under."""
        if entry.kind == "select":
            return self.retry.call(self._select, entry.run_id, entry.request).store_epoch
        return self.retry.call(self._report, entry.run_id, entry.request).store_epoch

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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
