"""The embedded selector: the application layer in-process, over the in-memory store."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pcm_contract.models import (
    DeleteAck,
    OutcomeAck,
    OutcomeReport,
    RunInfo,
    SelectRequest,
    SelectResponse,
)

if TYPE_CHECKING:
    from selector_service.service import SelectorService


class EmbeddedClient:
    url = "embedded"

    def __init__(self, service: SelectorService | None = None) -> None:
        # The one trainer module that runs the service: imported when the client is created.
        from selector_service.service import SelectorService
        from selector_service.store import MemoryStore

        self.service = service or SelectorService(MemoryStore())

    def put_run(self, run_id: str, **config: Any) -> RunInfo:
        return self.service.put_run(run_id, config)

    def get_run(self, run_id: str) -> RunInfo:
        return self.service.get_run(run_id)

    def delete_run(self, run_id: str) -> DeleteAck:
        return self.service.delete_run(run_id)

    def select(self, run_id: str,
               request: SelectRequest | Mapping[str, Any]) -> SelectResponse:
        return self.service.select(run_id, request)

    def report_outcomes(self, run_id: str,
                        report: OutcomeReport | Mapping[str, Any]) -> OutcomeAck:
        return self.service.report_outcomes(run_id, report)

    pending = 0  # nothing is ever pending in-process
    pending_reports = 0

    def flush(self) -> int:
        return 0

    def settle(self, run_id: str) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> EmbeddedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
