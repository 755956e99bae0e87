"""The replay log: every select and outcome report a remote client sent, until the service
holds it for good, so that each batch a trainer trains on is counted by the service exactly
once, with the masks the trainer trained on (docs/design.md, "Phantom commits";
docs/operations.md).

- A batch selected locally (local.py) is logged *pending*. Once the service answers again, the
  client replays it: the same request_id and batch with ``trained_masks`` /
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

Pending entries are replayed in order on the next successful call, or by ``flush()``; an entry
leaves the log only after the service acknowledged it (and, for durability, confirmed it). With
``queue_path`` pending entries are also kept in a JSONL journal that survives a restart of the
trainer.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from pcm_contract.models import OutcomeReport, SelectRequest, SelectResponse

log = logging.getLogger(__name__)

DURABLE_AFTER_S = 3.0  # AOF everysec fsyncs within ~1-2 s of a write
# Acknowledged entries kept for a replay at most (the oldest go first): bounds the memory of a
# client that selects many times a second (a trainer holds one or two within DURABLE_AFTER_S).
MAX_UNCONFIRMED = 16

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
