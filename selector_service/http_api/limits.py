"""What the HTTP server refuses before a request reaches a route: bounded memory and time.

`GuardMiddleware` (pure ASGI, outside the routes) checks, for every request, in this order:

1. the bearer token, for `/v1/...` when auth is on: 401 before a byte of the body is read;
2. the declared size (Content-Length) against the route's limit (`PCM_MAX_BODY_MB` for Select,
   `PCM_MAX_SMALL_BODY_KB` for everything else): 413 before reading;
3. while the body streams in: the same limit (413 as soon as it is passed, for chunked bodies)
   and `PCM_BODY_TIMEOUT_S` for the whole body (408).

Answers sent before the body was read close the connection (`connection: close`), so nothing
more of that body is read.

Below HTTP requests, uvicorn's public options (`server.py`) bound the connections: the size of
a request's headers (`h11_max_incomplete_event_size`), idle keep-alive connections
(`timeout_keep_alive`, `PCM_KEEP_ALIVE_S`) and requests beyond `PCM_MAX_CONNECTIONS` (503,
`limit_concurrency`). Two limits have no uvicorn option: a time limit on a request's headers,
and closing connections beyond the cap at once (uvicorn keeps them open until they send a
request). `guarded_connections` adds both around uvicorn's own HTTP/1.1 protocol, which it
wraps (given to uvicorn as `Config(http=...)`) and drives through the asyncio protocol
interface alone:

- a connection must send a request's headers within `PCM_HEADER_TIMEOUT_S` of opening or of its
  previous answer (slow-header and silent clients are cut off): the timer stops at the end of
  the header block, and `GuardMiddleware` starts it again when a request's answer is sent;
- connections beyond `PCM_MAX_CONNECTIONS` are closed at once, never handed to uvicorn.
"""

from __future__ import annotations

import asyncio
import contextvars
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
# The end of a request's header block, as h11 reads it (CRLF or bare LF line ends).
HEADER_END = re.compile(rb"\n\r?\n")


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
        connection = _connection.get()
        if connection is not None:
            connection.request_started()
        try:
            await self._guarded(scope, receive, send)
        finally:
            if connection is not None:
                connection.request_finished()

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
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


class GuardedConnection(asyncio.Protocol):
    """One HTTP connection: the header timer and the connection cap around `inner`, the
    protocol uvicorn would have used, to which every asyncio callback is passed on. The
    requests of the connection run in tasks that uvicorn creates while handing it data, so
    they see this object in `_connection` (asyncio tasks copy the context they are created in)
    and `GuardMiddleware` tells it when each request starts and finishes."""

    def __init__(self, inner: asyncio.Protocol, connections: set[GuardedConnection],
                 header_timeout_s: float, max_connections: int) -> None:
        self.inner = inner
        self.connections = connections
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self.transport: asyncio.BaseTransport | None = None
        self.refused = False
        self.in_flight = 0  # requests in the app
        self.timer: asyncio.TimerHandle | None = None  # set while headers are awaited
        self.tail = b""  # the last bytes received while headers are awaited

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if len(self.connections) >= self.max_connections:
            log.warning("HTTP connection refused: %d open, the limit is %d",
                        len(self.connections), self.max_connections)
            self.refused = True
            transport.close()
            return
        self.connections.add(self)
        self.inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if self.timer is not None:  # headers awaited
            if HEADER_END.search(data) or HEADER_END.search(self.tail + data[:2]):
                self._disarm()  # a request's headers are in: its body has its own deadline
            else:
                self.tail = (self.tail + data[-2:])[-2:]
        token = _connection.set(self)
        try:
            self.inner.data_received(data)
        finally:
            _connection.reset(token)

    def eof_received(self) -> bool | None:
        return None if self.refused else self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if not self.refused:
            self.connections.discard(self)
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self.refused:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if not self.refused:
            self.inner.resume_writing()

    def request_started(self) -> None:
        self.in_flight += 1
        self._disarm()

    def request_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._arm()  # the next request's headers are due in time too

    def _arm(self) -> None:
        self._disarm()
        if self.transport is not None and not self.transport.is_closing():
            self.tail = b""
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _header_timeout(self) -> None:
        self.timer = None
        if self.in_flight == 0 and self.transport is not None \
                and not self.transport.is_closing():
            log.info("HTTP connection closed: no request headers within %g s",
                     self.header_timeout_s)
            self.transport.close()


_connection: contextvars.ContextVar[GuardedConnection | None] = contextvars.ContextVar(
    "pcm_http_connection", default=None)


def guarded_connections(header_timeout_s: float, max_connections: int,
                        protocol: type[asyncio.Protocol] = H11Protocol
                        ) -> type[asyncio.Protocol]:
    """An HTTP protocol class for `uvicorn.Config(http=...)`: uvicorn's `protocol` (h11 by
    default), created with the arguments uvicorn passes, inside a `GuardedConnection`; one
    connection cap for all the connections of the server."""
    connections: set[GuardedConnection] = set()

    class Guarded(GuardedConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(protocol(*args, **kwargs), connections, header_timeout_s,
                             max_connections)

    return Guarded
