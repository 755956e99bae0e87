"""What the HTTP server refuses before a request reaches a route: bounded memory and time.

`GuardMiddleware` (pure ASGI, outside the routes) checks, for every request, in this order:

1. the bearer token, for `/v1/...` when auth is on: 401 before a byte of the body is read;
2. the declared size (Content-Length) against the route's limit (`PCM_MAX_BODY_MB` for Select,
   `PCM_MAX_SMALL_BODY_KB` for everything else): 413 before reading;
3. while the body streams in: the same limit (413 as soon as it is passed, for chunked bodies)
   and `PCM_BODY_TIMEOUT_S` for the whole body (408).

Answers sent before the body was read close the connection (`connection: close`), so nothing
more of that body is read. `guarded_protocol` is the uvicorn HTTP/1.1 protocol with a header
timeout (a connection must send a request's headers within `PCM_HEADER_TIMEOUT_S` of opening or
of its previous answer: slow-header clients are cut off) and a connection cap
(`PCM_MAX_CONNECTIONS`: connections beyond it are closed at once).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from pcm_contract.errors import (
    PayloadTooLarge,
    PCMError,
    RequestTimeout,
    Unauthenticated,
)
from selector_service.auth import TokenAuth

log = logging.getLogger(__name__)

SELECT_PATH = re.compile(r"^/v1/runs/[^/]+/select/?$")
PROTECTED_PREFIX = "/v1/"


class GuardMiddleware:
    def __init__(self, app: ASGIApp, *, auth: TokenAuth, max_body_bytes: int,
                 max_small_body_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.auth = auth
        self.max_body_bytes = max_body_bytes
        self.max_small_body_bytes = max_small_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        headers = _headers(scope)
        if self.auth.enabled and path.startswith(PROTECTED_PREFIX):
            try:
                self.auth.check(headers.get("authorization"))
            except Unauthenticated as exc:
                await _refuse(send, exc, {"www-authenticate": "Bearer"})
                return
        limit = (self.max_body_bytes if scope.get("method") == "POST" and SELECT_PATH.match(path)
                 else self.max_small_body_bytes)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _refuse(send, PayloadTooLarge(
                f"{declared} bytes, over the limit of {limit} for this route; split the batch"))
            return
        deadline = time.monotonic() + self.body_timeout_s
        received = 0

        async def guarded_receive() -> Message:
            nonlocal received
            remaining = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0.001))
            except TimeoutError:
                raise RequestTimeout(f"the body did not arrive within {self.body_timeout_s:g} "
                                     "s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"over the limit of {limit} bytes for this route; "
                                          "split the batch")
            return message

        await self.app(scope, guarded_receive, send)


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        out.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return out


async def _refuse(send: Send, exc: PCMError, extra: dict[str, str] | None = None) -> None:
    """Answer an error before the body was read, and close the connection."""
    body = json.dumps({"detail": str(exc), "code": exc.grpc_code, "field": exc.field}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": exc.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a header timeout and a connection cap."""

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning("HTTP connection refused: %d open, the limit is %d",
                            len(self.connections), max_connections)
                transport.close()
                return
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()  # the next request's headers are due in time too

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout,
                                                      self.cycle)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self, cycle_when_armed: Any) -> None:
            self._header_timer = None
            # A request whose headers arrived since the timer was armed has its own cycle; its
            # body has its own deadline (GuardMiddleware).
            if self.cycle is cycle_when_armed and not self.transport.is_closing():
                log.info("HTTP connection closed: no request headers within %g s",
                         header_timeout_s)
                self.transport.close()

    return GuardedH11Protocol
