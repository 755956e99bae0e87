"""The phase-state store interface, shared by the in-memory and Redis stores.

The application layer reads a run's state (possibly a few commits old), lets the core compute
the batch's selection and its state update (core/fold.py), then commits: the store folds the
update into the task states as stored now, atomically and in commit order, sets the run's
``state_version`` to the next version and stores the answer under the request_id, so a
replayed request gets the stored answer (REPLAY) and changes nothing. No commit fails because
another committed first. A commit is refused (STALE, nothing written) only when the state it
was computed on is more than ``max_staleness`` versions old, newer than the store's (a
restarted store that lost writes), or for another config: the application recomputes on the
store's current state, which a store may keep at hand for that (docs/design.md, "Consistency
of shared runs").

Idempotency records carry a digest of the canonical request (``digest``): a replay whose digest
differs from the stored one raises ``Conflict`` naming ``request_id`` (an empty digest, on
either side, is not compared). Every write of a run's task states (a commit, or a reconcile of
a replayed batch to the masks its client trained on) increments the run's ``revision``. A
commit also registers the answer's selection_id (and ``aliases``) so that outcome reports can
be checked against it.

A store may also have ``snapshot_for_select(run_id, task_ids)``: the state a select computes
on, like ``load`` but possibly stale (the Redis store answers from the state it last read or
was answered by a commit, without a round trip). The application layer uses ``load`` where a
store has none.

``epoch`` names the store's current incarnation: it changes when the backing store restarts
(a restarted Redis may have lost the last second of acknowledged writes, with AOF everysec), so
clients know to replay what they were acknowledged shortly before.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from pcm_contract.models import OutcomeReport, SelectResponse
from selector_service.core import RunConfig, TaskState
from selector_service.core.fold import StateUpdate

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
    STALE = "stale"  # commit: the state read is too old or of another config: recompute
    CONFLICT = "conflict"  # reconcile: the stored answer changed since it was read
    REPLAY = "replay"  # request_id already committed: `answer` is the stored answer
    GONE = "gone"  # reconcile: no record for request_id (it expired or was never stored)


@dataclass(frozen=True)
class FlatAnswer:
    """An answer's masks and weights as the flat per-chunk arrays they were split from, with
    each trajectory's chunk count: a store that serialises the answer packs these instead of
    concatenating the per-trajectory arrays again."""

    lengths: np.ndarray  # int (N,): chunks of each trajectory
    mask: np.ndarray  # bool (M,)
    weight: np.ndarray  # float64 (M,)


@dataclass
class CommitResult:
    status: CommitStatus
    # REPLAY: the stored answer; COMMITTED: the answer as stored (state_version, staleness)
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
        read_version: int,
        config: RunConfig,
        update: StateUpdate,
        answer: SelectResponse,
        history: dict[str, Any],
        *,
        digest: str = "",
        aliases: tuple[str, ...] = (),
        max_staleness: int | None = None,
        flat: FlatAnswer | None = None,
    ) -> CommitResult:
        """Atomically: if request_id is stored, REPLAY (Conflict if the digests differ); elif
        the run's state_version V is below read_version, or above it by more than
        max_staleness (None: no bound), or its config is not `config`, STALE (nothing
        written); else fold `update` into the stored states of its tasks (core/fold.py), set
        state_version to V + 1, increment the revision, store the answer with state_version
        V + 1 and staleness V - read_version (and the digest) under request_id, register
        answer.selection_id and `aliases` and append the history entry with those two
        fields. COMMITTED carries the answer as stored. Raises NotFound if the run was
        deleted, InvalidArgument (run_id) if a stored task state has another number of
        phases than the update. `flat`, if given, is `answer`'s masks and weights unsplit
        (a store may use it, e.g. to serialise the answer)."""

    def reconcile_select(
        self,
        run_id: str,
        request_id: str,
        counted: SelectResponse,
        kept_delta: dict[str, np.ndarray],
        answer: SelectResponse,
        history: dict[str, Any],
        *,
        aliases: tuple[str, ...] = (),
    ) -> CommitResult:
        """Atomically, if the answer stored for request_id is still `counted`: replace it with
        `answer` (keeping its digest), add `kept_delta` (task -> (P,) integers) to those
        tasks' stored chunks_kept, increment the revision and register `aliases`: COMMITTED
        (state_version unchanged); CONFLICT if the stored answer is another; GONE if there is
        no select record for request_id. Raises NotFound if the run was deleted,
        StoreUnavailable if a task of the batch has no state."""

    def record_report(self, run_id: str, request_id: str, report: OutcomeReport,
                      history: dict[str, Any], *, digest: str = "",
                      require_selection: bool = False) -> bool:
        """Atomically record an outcome report once: False if request_id was already stored
        (nothing changes; Conflict if the digests differ). With require_selection, raises
        NotFound (field selection_id) unless report.selection_id was registered by a commit.
        Raises NotFound for an unknown run."""

    def history(self, run_id: str, count: int = 100) -> list[dict[str, Any]]:
        """The newest `count` history entries, oldest first."""
