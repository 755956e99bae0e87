"""The gRPC clients (`grpc://HOST:PORT`): `GrpcClient` (grpcio) and `AsyncGrpcClient`
(grpc.aio). Thin: messages are converted by `pcm_contract.codec` (features travel as
packed little-endian float32 bytes, masks and weights come back as packed bytes), retries and
the local fallback are `trainer_client.clients.fallback`'s."""

from __future__ import annotations

import os
from typing import Any

import grpc

from pcm_contract import codec as convert
from pcm_contract.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    PCMError,
    StoreUnavailable,
    Unauthenticated,
)
from pcm_contract.gen.pcm.v1 import selector_pb2 as pb
from pcm_contract.gen.pcm.v1 import selector_pb2_grpc as pb_grpc
from pcm_contract.models import (
    DeleteAck,
    OutcomeAck,
    OutcomeReport,
    RunInfo,
    SelectRequest,
    SelectResponse,
)
from trainer_client.clients.fallback import (
    DURABLE_AFTER_S,
    AsyncRemoteClient,
    RemoteClient,
    SelectorTimeout,
)

ERROR_FIELD_KEY = "pcm-error-field"  # trailing metadata naming the bad field (see the proto)
SCHEME = "grpc://"


def grpc_target(url: str) -> str:
    if not url.startswith(SCHEME) or not url[len(SCHEME):].strip("/"):
        raise ValueError(f"not a gRPC selector url: {url!r} (expected grpc://HOST:PORT)")
    return url[len(SCHEME):].rstrip("/")


def channel_options(max_message_mb: int) -> list[tuple[str, int]]:
    size = max_message_mb * 1024 * 1024
    return [
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        # Reconnect quickly once a restarted selector is back (grpc's default backoff grows
        # to 120 s, during which every call fails fast).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 500),
    ]


def error_from_rpc(exc: grpc.RpcError) -> PCMError:
    """The project exception for a failed call (a grpc.Call)."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or str(code)
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    named = dict(trailing or ()).get(ERROR_FIELD_KEY)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field = named or details.partition(":")[0]
        message = details.removeprefix(f"{field}: ")
        return InvalidArgument(str(field), message)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        field = named or "request_id"
        return Conflict(str(field), details.removeprefix(f"{field}: "))
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(details, field=str(named or "run_id"))
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(details)
    if code == grpc.StatusCode.UNAVAILABLE:  # server down/unreachable, or its store down
        return StoreUnavailable(details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return SelectorTimeout(f"no answer from the selector in time ({details})")
    return PCMError(f"{code.name if code is not None else 'UNKNOWN'}: {details}")


def select_message(run_id: str, request: SelectRequest) -> pb.SelectChunksRequest:
    """The wire form of a Select request. Rows are checked against phase_ids per trajectory
    first: flattened, a trajectory's extra row would silently shift its neighbours' features."""
    for i, t in enumerate(request.trajectories):
        if t.action_features.shape[0] != t.phase_ids.shape[0]:
            raise InvalidArgument(
                f"trajectories[{i}].action_features",
                f"has {t.action_features.shape[0]} rows for {t.phase_ids.shape[0]} phase_ids "
                "(one feature row per chunk)")
    return convert.select_request_to_proto(run_id, request)


class _GrpcOptions:
    def _setup(self, url: str, token: str | None, max_message_mb: int) -> None:
        self.target = grpc_target(url)
        self.max_message_mb = max_message_mb
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None


class GrpcClient(_GrpcOptions, RemoteClient):
    """`grpc://HOST:PORT`. Thread-safe (one channel, HTTP/2 multiplexed)."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 10.0,
                 max_message_mb: int = 256, retries: int = 4, backoff_s: float = 0.1,
                 max_backoff_s: float = 2.0, fallback: bool = False,
                 queue_path: str | os.PathLike[str] | None = None,
                 durable_after_s: float = DURABLE_AFTER_S) -> None:
        super().__init__(url, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s,
                         max_backoff_s=max_backoff_s, fallback=fallback, queue_path=queue_path,
                         durable_after_s=durable_after_s)
        self._setup(url, token, max_message_mb)
        self._channel = grpc.insecure_channel(self.target, channel_options(max_message_mb))
        self._stub = pb_grpc.ChunkSelectorStub(self._channel)

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def _put_run(self, run_id: str, changes: dict[str, Any]) -> RunInfo:
        msg = pb.PutRunRequest(run_id=run_id, config=convert.run_config_to_proto(changes))
        return convert.run_info_from_proto(self._call(self._stub.PutRun, msg))

    def _get_run(self, run_id: str) -> RunInfo:
        msg = pb.GetRunRequest(run_id=run_id)
        return convert.run_info_from_proto(self._call(self._stub.GetRun, msg))

    def _delete_run(self, run_id: str) -> DeleteAck:
        reply = self._call(self._stub.DeleteRun, pb.DeleteRunRequest(run_id=run_id))
        return DeleteAck(deleted=reply.deleted)

    def _select(self, run_id: str, request: SelectRequest) -> SelectResponse:
        msg = select_message(run_id, request)
        return convert.select_response_from_proto(self._call(self._stub.SelectChunks, msg))

    def _report(self, run_id: str, report: OutcomeReport) -> OutcomeAck:
        msg = convert.outcome_report_to_proto(run_id, report)
        reply = self._call(self._stub.ReportOutcomes, msg)
        return OutcomeAck(accepted=reply.accepted, store_epoch=reply.store_epoch)

    def close(self) -> None:
        self._channel.close()


class AsyncGrpcClient(_GrpcOptions, AsyncRemoteClient):
    """`grpc://HOST:PORT` over grpc.aio; the channel is opened on first use, in the running
    event loop. Use from one event loop."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 10.0,
                 max_message_mb: int = 256, retries: int = 4, backoff_s: float = 0.1,
                 max_backoff_s: float = 2.0, fallback: bool = False,
                 queue_path: str | os.PathLike[str] | None = None,
                 durable_after_s: float = DURABLE_AFTER_S) -> None:
        super().__init__(url, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s,
                         max_backoff_s=max_backoff_s, fallback=fallback, queue_path=queue_path,
                         durable_after_s=durable_after_s)
        self._setup(url, token, max_message_mb)
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.ChunkSelectorStub | None = None

    def _get_stub(self) -> pb_grpc.ChunkSelectorStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.target,
                                                      channel_options(self.max_message_mb))
            self._stub = pb_grpc.ChunkSelectorStub(self._channel)
        return self._stub

    async def _call(self, name: str, request: Any) -> Any:
        method = getattr(self._get_stub(), name)
        try:
            return await method(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    async def _put_run(self, run_id: str, changes: dict[str, Any]) -> RunInfo:
        msg = pb.PutRunRequest(run_id=run_id, config=convert.run_config_to_proto(changes))
        return convert.run_info_from_proto(await self._call("PutRun", msg))

    async def _get_run(self, run_id: str) -> RunInfo:
        return convert.run_info_from_proto(
            await self._call("GetRun", pb.GetRunRequest(run_id=run_id)))

    async def _delete_run(self, run_id: str) -> DeleteAck:
        reply = await self._call("DeleteRun", pb.DeleteRunRequest(run_id=run_id))
        return DeleteAck(deleted=reply.deleted)

    async def _select(self, run_id: str, request: SelectRequest) -> SelectResponse:
        msg = select_message(run_id, request)
        return convert.select_response_from_proto(await self._call("SelectChunks", msg))

    async def _report(self, run_id: str, report: OutcomeReport) -> OutcomeAck:
        msg = convert.outcome_report_to_proto(run_id, report)
        reply = await self._call("ReportOutcomes", msg)
        return OutcomeAck(accepted=reply.accepted, store_epoch=reply.store_epoch)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None
