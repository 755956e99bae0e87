"""gRPC server interceptors: bearer-token auth, Select metrics, and decoding requests."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from pcm_contract.errors import Unauthenticated
from selector_service.auth import TokenAuth
from selector_service.grpc_api.servicer import ERROR_FIELD_KEY, status_name
from selector_service.metrics import Metrics

log = logging.getLogger(__name__)

SELECT_METHOD = "/pcm.v1.ChunkSelector/SelectChunks"
MALFORMED = "body: malformed protobuf message"
# Health checks and server reflection stay open when auth is on.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def _metadata(details: grpc.HandlerCallDetails, key: str) -> str | None:
    for item in details.invocation_metadata or ():
        k, v = item
        if k == key:
            return v if isinstance(v, str) else v.decode("latin-1")
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED unless metadata `authorization: Bearer TOKEN` holds a configured token."""

    def __init__(self, auth: TokenAuth) -> None:
        self.auth = auth

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails
                                ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method or ""
        if self.auth.enabled and not method.startswith(OPEN_PREFIXES):
            try:
                self.auth.check(_metadata(handler_call_details, "authorization"))
            except Unauthenticated as exc:
                message = str(exc)

                async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

                # No deserializer: a rejected call's payload is never decoded.
                return grpc.unary_unary_rpc_method_handler(deny)
        return await continuation(handler_call_details)


class SelectMetricsInterceptor(grpc.aio.ServerInterceptor):
    """pcm_select_requests_total / pcm_select_latency_seconds for transport="grpc".

    The timing covers decoding the request and encoding the answer: the handler is given the
    raw bytes and returns bytes.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails
                                ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if (handler is None or handler_call_details.method != SELECT_METHOD
                or handler.unary_unary is None):
            return handler
        inner = handler.unary_unary
        decode = handler.request_deserializer
        encode = handler.response_serializer
        metrics = self.metrics

        async def observed(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            status = "INTERNAL"
            try:
                request = decode(raw) if decode is not None else raw
                response = await inner(request, context)
                out = encode(response) if encode is not None else response
                status = "OK"
                return out
            except Exception:
                status = status_name(context)
                if status == "OK":  # an exception without a status set
                    status = "INTERNAL"
                raise
            finally:
                metrics.observe_select("grpc", status, time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(observed)


class DecodeInterceptor(grpc.aio.ServerInterceptor):
    """Decode requests inside the handler, for every service (the open health and reflection
    services included): bytes that are not a valid message (or hold invalid UTF-8 in a string
    field) end the call INVALID_ARGUMENT, field `body`, with one short log line, instead of an
    UNKNOWN status and a traceback from grpc's own decoding. Innermost: the interceptors
    outside it see raw bytes."""

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails
                                ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer
        name = (handler_call_details.method or "").rsplit("/", 1)[-1]

        async def decoded(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                return decode(raw)
            except Exception as exc:  # google.protobuf DecodeError, and UnicodeDecodeError
                log.info("%s: malformed request (%d bytes): %s", name, len(raw),
                         type(exc).__name__)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED,
                                    trailing_metadata=((ERROR_FIELD_KEY, "body"),))

        async def requests(raw_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            async for raw in raw_iterator:
                yield await decoded(raw, context)

        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            unary_unary = handler.unary_unary

            async def uu(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
                return await unary_unary(await decoded(raw, context), context)

            return grpc.unary_unary_rpc_method_handler(uu, response_serializer=serialize)
        if handler.unary_stream is not None:
            unary_stream = handler.unary_stream

            async def us(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
                async for item in _stream(unary_stream(await decoded(raw, context), context)):
                    yield item

            return grpc.unary_stream_rpc_method_handler(us, response_serializer=serialize)
        if handler.stream_unary is not None:
            stream_unary = handler.stream_unary

            async def su(raw_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
                return await stream_unary(requests(raw_iterator, context), context)

            return grpc.stream_unary_rpc_method_handler(su, response_serializer=serialize)
        stream_stream = handler.stream_stream

        async def ss(raw_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            async for item in _stream(stream_stream(requests(raw_iterator, context), context)):
                yield item

        return grpc.stream_stream_rpc_method_handler(ss, response_serializer=serialize)


async def _stream(result: Any) -> Any:
    """The items of a streaming handler's result: an async generator, or a coroutine that
    writes through `context.write` (then nothing is yielded here)."""
    if inspect.isasyncgen(result):
        async for item in result:
            yield item
    else:
        await result
