"""The gRPC client (`grpc://HOST:PORT`, grpcio): RemoteClient's five hooks over one channel.
Thin: messages are converted by `pcm_contract.codec` (features travel as packed
little-endian float32 bytes, masks and weights come back as packed bytes); retries, the replay
log and the local fallback are remote.py's."""

from __future__ import annotations

from typing import Any

import grpc

from pcm_contract import codec, models
from pcm_contract.errors import InvalidArgument, PCMError
from pcm_contract.gen.pcm.v1 import selector_pb2 as pb
from pcm_contract.gen.pcm.v1 import selector_pb2_grpc as pb_grpc
from trainer_client.clients.errors import BY_GRPC_CODE, SelectorTimeout, error_from_answer
from trainer_client.clients.remote import RemoteClient

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
    """The project exception for a failed call (a grpc.Call): UNAVAILABLE is the server down
    or unreachable, or its store down; DEADLINE_EXCEEDED the client's timeout."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or str(code)
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    named = dict(trailing or ()).get(ERROR_FIELD_KEY)
    name = code.name if code is not None else "UNKNOWN"
    kind = BY_GRPC_CODE.get(name)
    if kind is SelectorTimeout:
        details = f"no answer from the selector in time ({details})"
    return error_from_answer(kind, details, str(named) if named else None, name)


def select_message(run_id: str, request: models.SelectRequest) -> pb.SelectChunksRequest:
    """The wire form of a Select request. Rows are checked against phase_ids per trajectory
    first: flattened, a trajectory's extra row would silently shift its neighbours' features."""
    for i, t in enumerate(request.trajectories):
        if t.action_features.shape[0] != t.phase_ids.shape[0]:
            raise InvalidArgument(
                f"trajectories[{i}].action_features",
                f"has {t.action_features.shape[0]} rows for {t.phase_ids.shape[0]} phase_ids "
                "(one feature row per chunk)")
    return codec.select_request_to_proto(run_id, request)


class GrpcClient(RemoteClient):
    """`grpc://HOST:PORT`. Thread-safe (one channel, HTTP/2 multiplexed)."""

    def __init__(self, url: str, *, token: str | None = None, max_message_mb: int = 256,
                 **options: Any) -> None:
        """token: the bearer token the selector asks for; max_message_mb: the largest message
        either way; options: RemoteClient's (timeout_s, retries, fallback, queue_path, ...)."""
        super().__init__(url, **options)
        self.target = grpc_target(url)
        self.max_message_mb = max_message_mb
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._channel = grpc.insecure_channel(self.target, channel_options(max_message_mb))
        self._stub = pb_grpc.ChunkSelectorStub(self._channel)

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def _put_run(self, run_id: str, changes: dict[str, Any]) -> models.RunInfo:
        msg = pb.PutRunRequest(run_id=run_id, config=codec.run_config_to_proto(changes))
        return codec.run_info_from_proto(self._call(self._stub.PutRun, msg))

    def _get_run(self, run_id: str) -> models.RunInfo:
        msg = pb.GetRunRequest(run_id=run_id)
        return codec.run_info_from_proto(self._call(self._stub.GetRun, msg))

    def _delete_run(self, run_id: str) -> models.DeleteAck:
        reply = self._call(self._stub.DeleteRun, pb.DeleteRunRequest(run_id=run_id))
        return models.DeleteAck(deleted=reply.deleted)

    def _select(self, run_id: str, request: models.SelectRequest) -> models.SelectResponse:
        msg = select_message(run_id, request)
        return codec.select_response_from_proto(self._call(self._stub.SelectChunks, msg))

    def _report(self, run_id: str, report: models.OutcomeReport) -> models.OutcomeAck:
        msg = codec.outcome_report_to_proto(run_id, report)
        reply = self._call(self._stub.ReportOutcomes, msg)
        return models.OutcomeAck(accepted=reply.accepted, store_epoch=reply.store_epoch)

    def close(self) -> None:
        self._channel.close()
