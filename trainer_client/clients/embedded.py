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
    from selector_service.store import MemoryStore


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

    def export_state(self, run_id: str) -> dict[str, Any]:
        """The run's phase state as plain data, for a checkpoint (`MemoryStore.export_state`):
        the in-process store dies with the process, so a resumed trainer puts it back with
        `import_state`."""
        return self._memory_store().export_state(run_id)

    def import_state(self, run_id: str, data: dict[str, Any]) -> None:
        self._memory_store().import_state(run_id, data)

    def _memory_store(self) -> MemoryStore:
        from selector_service.store import MemoryStore

        store = self.service.store
        if not isinstance(store, MemoryStore):
            raise TypeError(f"the embedded selector's store is a {type(store).__name__}, "
                            "not the in-memory store whose state a checkpoint carries")
        return store

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
