"""The asyncio clients: `connect_async(url)` with the same urls, options and methods as
`connect(url)`, as coroutines.

Each is a thin facade over the sync client for the url: a call runs the sync method in a
worker thread (`asyncio.to_thread`), so the retry policy, the replay log and the local
fallback exist once (remote.py) and the sync clients, which the trainer and the benchmark call
in their loops, pay nothing for the asyncio ones. The sync clients are thread-safe, so
concurrent coroutines are concurrent calls; a cancelled call still completes in its thread
(select and report are idempotent on request_id, and what it logged is replayed as usual).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pcm_contract import models
from trainer_client.clients import connect, transport_of
from trainer_client.clients.interface import SelectorClient


class AsyncSelectorClient:
    """A SelectorClient's methods as coroutines. `AsyncSelectorClient(url, **options)` wraps
    `connect(url, **options)`; the subclasses below name the transport."""

    transport: ClassVar[str | None] = None  # the one transport a subclass accepts

    def __init__(self, url: str = "embedded", **options: Any) -> None:
        if self.transport is not None and transport_of(url) != self.transport:
            raise ValueError(f"{type(self).__name__} is for {self.transport} urls, got {url!r}")
        self.sync: SelectorClient = connect(url, **options)
        self.url = self.sync.url

    async def put_run(self, run_id: str, **config: Any) -> models.RunInfo:
        return await asyncio.to_thread(self.sync.put_run, run_id, **config)

    async def get_run(self, run_id: str) -> models.RunInfo:
        return await asyncio.to_thread(self.sync.get_run, run_id)

    async def delete_run(self, run_id: str) -> models.DeleteAck:
        return await asyncio.to_thread(self.sync.delete_run, run_id)

    async def select(self, run_id: str, request: models.SelectRequest | Mapping[str, Any]
                     ) -> models.SelectResponse:
        return await asyncio.to_thread(self.sync.select, run_id, request)

    async def report_outcomes(self, run_id: str, report: models.OutcomeReport | Mapping[str, Any]
                              ) -> models.OutcomeAck:
        return await asyncio.to_thread(self.sync.report_outcomes, run_id, report)

    @property
    def pending(self) -> int:
        """Selects and reports waiting to be (re)delivered to the service (0 embedded)."""
        return self.sync.pending

    @property
    def pending_reports(self) -> int:
        """Outcome reports waiting to be delivered to the service (0 embedded)."""
        return self.sync.pending_reports

    async def flush(self) -> int:
        return await asyncio.to_thread(self.sync.flush)

    async def settle(self, run_id: str) -> None:
        await asyncio.to_thread(self.sync.settle, run_id)

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncEmbeddedClient(AsyncSelectorClient):
    """EmbeddedClient's methods as coroutines."""

    transport = "embedded"

    def __init__(self, **options: Any) -> None:
        super().__init__("embedded", **options)


class AsyncGrpcClient(AsyncSelectorClient):
    """GrpcClient's methods as coroutines (`grpc://HOST:PORT`)."""

    transport = "grpc"


class AsyncHttpClient(AsyncSelectorClient):
    """HttpClient's methods as coroutines (`http://HOST:PORT`, `https://...`)."""

    transport = "http"


_BY_TRANSPORT: dict[str, type[AsyncSelectorClient]] = {
    "grpc": AsyncGrpcClient, "http": AsyncHttpClient}


def connect_async(url: str = "embedded", **options: Any) -> AsyncSelectorClient:
    """`embedded`, `grpc://HOST:PORT` or `http://HOST:PORT` (also `https://`); options as for
    `connect` (token, timeout_s, retries, fallback, queue_path, ...)."""
    transport = transport_of(url)
    if transport == "embedded":
        return AsyncEmbeddedClient(**options)
    return _BY_TRANSPORT[transport](url, **options)


__all__ = ["AsyncEmbeddedClient", "AsyncGrpcClient", "AsyncHttpClient", "AsyncSelectorClient",
           "connect_async"]
