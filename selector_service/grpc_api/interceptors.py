"""gRPC server interceptors: bearer-token auth and Select metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from selector_service.auth import TokenAuth
from selector_service.errors import Unauthenticated
from selector_service.grpc_api.servicer import status_name
from selector_service.metrics import Metrics

SELECT_METHOD = "/pcm.v1.ChunkSelector/SelectChunks"
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
