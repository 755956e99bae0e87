"""The one client interface every transport implements (embedded, gRPC, HTTP)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from pcm_contract import models


@runtime_checkable
class SelectorClient(Protocol):
    """Requests and answers are the pydantic models whose JSON is the HTTP body; a dict of that
    shape is accepted too, so a trainer switches transport by changing the url alone."""

    url: str

    def put_run(self, run_id: str, **config: Any) -> models.RunInfo: ...

    def get_run(self, run_id: str) -> models.RunInfo: ...

    def delete_run(self, run_id: str) -> models.DeleteAck: ...

    def select(self, run_id: str,
               request: models.SelectRequest | Mapping[str, Any]) -> models.SelectResponse: ...

    def report_outcomes(self, run_id: str,
                        report: models.OutcomeReport | Mapping[str, Any]) -> models.OutcomeAck: ...

    @property
    def pending(self) -> int:
        """Selects and reports waiting to be (re)delivered to the service (0 embedded)."""
        ...

    @property
    def pending_reports(self) -> int:
        """Outcome reports waiting to be delivered to the service (0 embedded)."""
        ...

    def flush(self) -> int:
        """Deliver what is pending, in order; the number of outcome reports delivered."""
        ...

    def settle(self, run_id: str) -> None:
        """Before exiting: wait until what the service acknowledged is durable, replaying
        whatever its store lost (replay_log.py). A no-op embedded."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> SelectorClient: ...

    def __exit__(self, *exc: object) -> None: ...
