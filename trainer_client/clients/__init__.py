"""`connect(url)`: one client interface over the embedded, gRPC and HTTP selectors."""

from __future__ import annotations

from typing import Any

from trainer_client.clients.base import SelectorClient
from trainer_client.clients.embedded import EmbeddedClient


def connect(url: str = "embedded", **options: Any) -> SelectorClient:
    """`embedded`, `grpc://HOST:PORT` or `http://HOST:PORT` (also `https://`)."""
    if url == "embedded":
        return EmbeddedClient(**options)
    elif url.startswith("grpc://"):
        from trainer_client.clients.grpc_client import GrpcClient

        return GrpcClient(url, **options)
    elif url.startswith(("http://", "https://")):
        from trainer_client.clients.http_client import HttpClient

        return HttpClient(url, **options)
    else:
        raise ValueError(f"unknown selector url {url!r}: use 'embedded', 'grpc://HOST:PORT' or "
                         "'http://HOST:PORT'")


__all__ = ["EmbeddedClient", "SelectorClient", "connect"]
