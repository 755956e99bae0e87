"""`connect(url)`: one client interface over the embedded, gRPC and HTTP selectors
(`connect_async(url)` in aio.py: the same, with coroutines).

    interface.py       SelectorClient, the interface every client implements
    embedded.py        the service in-process
    remote.py          what the remote clients share: checks, retries, replay log, fallback
    grpc_transport.py  GrpcClient: remote.py's hooks over grpcio
    http_transport.py  HttpClient: remote.py's hooks over httpx
    retry.py           when a call is retried, and how
    replay_log.py      the log that makes every trained batch count exactly once
    local.py           the local fallback selector
    errors.py          the client-side errors and the mapping of error answers
    aio.py             the asyncio facade over the clients above
"""

from __future__ import annotations

from typing import Any, Literal

from trainer_client.clients.embedded import EmbeddedClient
from trainer_client.clients.interface import SelectorClient

Transport = Literal["embedded", "grpc", "http"]


def transport_of(url: str) -> Transport:
    """`embedded`, `grpc://HOST:PORT` or `http://HOST:PORT` (also `https://`)."""
    if url == "embedded":
        return "embedded"
    if url.startswith("grpc://"):
        return "grpc"
    if url.startswith(("http://", "https://")):
        return "http"
    raise ValueError(f"unknown selector url {url!r}: use 'embedded', 'grpc://HOST:PORT' or "
                     "'http://HOST:PORT'")


def connect(url: str = "embedded", **options: Any) -> SelectorClient:
    """The client for `url` (see transport_of); options go to its constructor (remote:
    token, timeout_s, retries, backoff_s, fallback, queue_path, ...). grpc and httpx are
    imported on first use."""
    transport = transport_of(url)
    if transport == "grpc":
        from trainer_client.clients.grpc_transport import GrpcClient

        return GrpcClient(url, **options)
    if transport == "http":
        from trainer_client.clients.http_transport import HttpClient

        return HttpClient(url, **options)
    return EmbeddedClient(**options)


__all__ = ["EmbeddedClient", "SelectorClient", "Transport", "connect", "transport_of"]
