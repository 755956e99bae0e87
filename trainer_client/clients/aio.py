"""The asyncio clients: `connect_async(url)` with the same urls and methods as `connect(url)`,
as coroutines (`AsyncGrpcClient` over grpc.aio, `AsyncHttpClient` over httpx.AsyncClient, and
the embedded selector run in a worker thread)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from pcm_contract.models import (
    DeleteAck,
    OutcomeAck,
    OutcomeReport,
    RunInfo,
    SelectRequest,
    SelectResponse,
)
from trainer_client.clients.embedded import EmbeddedClient


@runtime_checkable
class AsyncSelectorClient(Protocol):
    """SelectorClient with coroutine methods."""

    url: str

    async def put_run(self, run_id: str, **config: Any) -> RunInfo: ...

    async def get_run(self, run_id: str) -> RunInfo: ...

    async def delete_run(self, run_id: str) -> DeleteAck: ...

    async def select(self, run_id: str,
                     request: SelectRequest | Mapping[str, Any]) -> SelectResponse: ...

    async def report_outcomes(self, run_id: str,
                              report: OutcomeReport | Mapping[str, Any]) -> OutcomeAck: ...

    @property
    def pending(self) -> int: ...

    @property
    def pending_reports(self) -> int: ...

    async def flush(self) -> int: ...

    async def settle(self, run_id: str) -> None: ...

    async def close(self) -> None: ...


class AsyncEmbeddedClient:
    """The embedded selector behind coroutines (each call runs in a worker thread)."""

    url = "embedded"

    def __init__(self, **options: Any) -> None:
        self.sync = EmbeddedClient(**options)

    async def put_run(self, run_id: str, **config: Any) -> RunInfo:
        return await asyncio.to_thread(lambda: self.sync.put_run(run_id, **config))

    async def get_run(self, run_id: str) -> RunInfo:
        return await asyncio.to_thread(self.sync.get_run, run_id)

    async def delete_run(self, run_id: str) -> DeleteAck:
        return await asyncio.to_thread(self.sync.delete_run, run_id)

    async def select(self, run_id: str,
                     request: SelectRequest | Mapping[str, Any]) -> SelectResponse:
        return await asyncio.to_thread(self.sync.select, run_id, request)

    async def report_outcomes(self, run_id: str,
                              report: OutcomeReport | Mapping[str, Any]) -> OutcomeAck:
        return await asyncio.to_thread(self.sync.report_outcomes, run_id, report)

    pending = 0  # nothing is ever pending in-process
    pending_reports = 0

    async def flush(self) -> int:
        return 0

    async def settle(self, run_id: str) -> None:
        return None

    async def close(self) -> None:
        self.sync.close()

    async def __aenter__(self) -> AsyncEmbeddedClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def connect_async(url: str = "embedded", **options: Any) -> AsyncSelectorClient:
    """`embedded`, `grpc://HOST:PORT` or `http://HOST:PORT` (also `https://`); options as for
    the sync clients (token, timeout_s, retries, fallback, queue_path, ...)."""
    if url == "embedded":
        return AsyncEmbeddedClient(**options)
    if url.startswith("grpc://"):
        from trainer_client.clients.grpc_client import AsyncGrpcClient

        return AsyncGrpcClient(url, **options)
    if url.startswith(("http://", "https://")):
        from trainer_client.clients.http_client import AsyncHttpClient

        return AsyncHttpClient(url, **options)
    raise ValueError(f"unknown selector url {url!r}: use 'embedded', 'grpc://HOST:PORT' or "
                     "'http://HOST:PORT'")


__all__ = ["AsyncEmbeddedClient", "AsyncSelectorClient", "connect_async"]
