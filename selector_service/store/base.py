"""The phase-state store interface, shared by the in-memory and Redis stores.

The application layer reads a run's state, lets the core compute the batch's selection and new
task states, then commits them with a compare-and-set on the run's ``state_version``: a commit
that lost a race reports CONFLICT and the application retries on fresh state. A commit also
stores the answer under the request_id, so a replayed request gets the stored answer (REPLAY)
and changes nothing.

Idempotency records carry a digest of the canonical request (``digest``): a replay whose digest
differs from the stored one raises ``Conflict`` naming ``request_id`` (an empty digest, on
either side, is not compared). Every write of a run's task states (a commit, or a reconcile of
a replayed batch to the masks its client trained on) increments the run's ``revision``;
``expected_revision`` makes a write compare-and-set on it. A commit also registers the answer's
selection_id (and ``aliases``) so that outcome reports can be checked against it.

A store may also have ``snapshot_for_select(run_id, task_ids)``: the state a select computes
on, like ``load`` but possibly stale (the Redis store answers from the state it last read or
committed, without a round trip; ``commit_select``'s compare-and-set catches a stale copy and
the store then holds the current state). The application layer uses ``load`` where a store has
none.

``epoch`` names the store's current incarnation: it changes when the backing store restarts
(a restarted Redis may have lost the last second of acknowledged writes, with AOF everysec), so
clients know to replay what they were acknowledged shortly before.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pcm_contract.models import OutcomeReport, SelectResponse
from selector_service.core import RunConfig, TaskState

RequestKind = Literal["select", "report"]


@dataclass
class RunSnapshot:
    config: RunConfig
    state_version: int
    outcome_reports: int
    tasks: dict[str, TaskState] = field(default_factory=dict)
    revision: int = 0  # writes of the run's task states (commits and reconciles)


class CommitStatus(enum.Enum):
    COMMITTED = "committed"
    CONFLICT = "conflict"  # state_version moved on: re-read and recompute
    REPLAY = "replay"  # request_id already committed: `answer` is the stored answer
    GONE = "gone"  # reconcile: no record for request_id (it expired or was never stored)


@dataclass
class CommitResult:
    status: CommitStatus
    answer: SelectResponse | None = None


class PhaseStore(Protocol):
    """Every method raises ``StoreUnavailable`` when the backing store cannot be reached."""

    @property
    def epoch(self) -> str:
        """The store's current incarnation (changes when the backing store restarts)."""

    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    def put_config(self, run_id: str, config: RunConfig) -> bool:
        """Create the run (state_version 0) or replace its config, keeping its state.
        Returns True if the run was created."""

    def get_config(self, run_id: str) -> RunConfig | None: ...

    def delete_run(self, run_id: str) -> bool:
        """Delete config, state, idempotency records and history. True if it existed."""

    def load(self, run_id: str, task_ids: Iterable[str] | None = None) -> RunSnapshot | None:
        """The run's config, version and the given tasks' states (all tasks if None; tasks
        never seen are absent). None for an unknown run. Returned objects are copies."""

    def get_request(self, run_id: str, request_id: str,
                    digest: str = "") -> tuple[RequestKind, Any] | None:
        """What was stored for request_id: ("select", SelectResponse) or ("report", None).
        Raises Conflict if `digest` and the stored digest differ."""

    def commit_select(
        self,
        run_id: str,
        request_id: str,
        expected_version: int,
        new_states: dict[str, TaskState],
        answer: SelectResponse,
        history: dict[str, Any],
        *,
        digest: str = "",
        expected_revision: int | None = None,
        aliases: tuple[str, ...] = (),
    ) -> CommitResult:
        """Atomically: if request_id is stored, REPLAY (Conflict if the digests differ); elif
        the run's state_version is not expected_version (or its revision not
        expected_revision), CONFLICT; else write the states, set state_version to
        answer.state_version (= expected_version + 1), increment the revision, store the answer
        and digest under request_id, register answer.selection_id and `aliases` and append the
        history entry. Raises NotFound if the run was deleted."""

    def reconcile_select(
        self,
        run_id: str,
        request_id: str,
        expected_revision: int,
        new_states: dict[str, TaskState],
        answer: SelectResponse,
        history: dict[str, Any],
        *,
        aliases: tuple[str, ...] = (),
    ) -> CommitResult:
        """Atomically replace the stored answer of a committed request_id (keeping its digest)
        and write the given task states, if the run's revision is expected_revision: COMMITTED
        (revision incremented, state_version unchanged, `aliases` registered), CONFLICT, or
        GONE (no record for request_id). Raises NotFound if the run was deleted."""

    def record_report(self, run_id: str, request_id: str, report: OutcomeReport,
                      history: dict[str, Any], *, digest: str = "",
                      require_selection: bool = False) -> bool:
        """Atomically record an outcome report once: False if request_id was already stored
        (nothing changes; Conflict if the digests differ). With require_selection, raises
        NotFound (field selection_id) unless report.selection_id was registered by a commit.
        Raises NotFound for an unknown run."""

    def history(self, run_id: str, count: int = 100) -> list[dict[str, Any]]:
        """The newest `count` history entries, oldest first."""
