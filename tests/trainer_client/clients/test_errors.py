"""The one mapping of the service's error answers to exceptions, over both transports."""

from __future__ import annotations

import grpc
import httpx
import pytest

from pcm_contract.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    PCMError,
    StoreUnavailable,
    Unauthenticated,
)
from trainer_client.clients.errors import (
    BY_GRPC_CODE,
    BY_HTTP_STATUS,
    SelectorTimeout,
    SelectorUnreachable,
)
from trainer_client.clients.grpc_transport import ERROR_FIELD_KEY, error_from_rpc
from trainer_client.clients.http_transport import error_from_response, error_from_transport
from trainer_client.clients.retry import RetryPolicy, retryable

ANSWERED = (InvalidArgument, Conflict, NotFound, Unauthenticated, StoreUnavailable)


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, field: str | None = None) -> None:
        self._code, self._details = code, details
        self._trailing = ((ERROR_FIELD_KEY, field),) if field else ()

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing


@pytest.mark.parametrize("kind", ANSWERED)
def test_each_error_type_comes_back_as_itself(kind: type[PCMError]) -> None:
    assert BY_HTTP_STATUS[kind.http_status] is kind
    assert BY_GRPC_CODE[kind.grpc_code] is kind
    over_http = error_from_response(httpx.Response(kind.http_status, json={"detail": "x: why"}))
    over_grpc = error_from_rpc(FakeRpcError(getattr(grpc.StatusCode, kind.grpc_code), "x: why"))
    assert type(over_http) is kind and type(over_grpc) is kind


def test_fields_and_messages_agree_across_transports() -> None:
    answer = {"detail": "trajectories[1].phase_ids: out of range", "code": "INVALID_ARGUMENT",
              "field": "trajectories[1].phase_ids"}
    over_http = error_from_response(httpx.Response(422, json=answer))
    over_grpc = error_from_rpc(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, answer["detail"],
                                            answer["field"]))
    for exc in (over_http, over_grpc):
        assert isinstance(exc, InvalidArgument)
        assert (exc.field, exc.message) == ("trajectories[1].phase_ids", "out of range")
    unnamed = error_from_response(httpx.Response(409, json={"detail": "request_id: reused"}))
    assert isinstance(unnamed, Conflict) and unnamed.field == "request_id"
    missing = error_from_rpc(FakeRpcError(grpc.StatusCode.NOT_FOUND, "no selection s",
                                          "selection_id"))
    assert isinstance(missing, NotFound) and missing.field == "selection_id"
    bad_body = error_from_response(httpx.Response(400, text="not json"))
    assert isinstance(bad_body, InvalidArgument)


def test_timeouts_unreachable_and_unknown_statuses() -> None:
    deadline = error_from_rpc(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline"))
    assert isinstance(deadline, SelectorTimeout) and not retryable(deadline)
    assert isinstance(error_from_response(httpx.Response(408, json={"detail": "slow body"})),
                      SelectorTimeout)
    refused = error_from_transport(httpx.ConnectError("refused"), "http://h:1")
    assert isinstance(refused, SelectorUnreachable) and retryable(refused)
    read = error_from_transport(httpx.ReadTimeout("slow"), "http://h:1")
    assert isinstance(read, SelectorTimeout)
    assert retryable(StoreUnavailable("redis down"))
    assert not retryable(InvalidArgument("x", "bad"))
    internal = error_from_response(httpx.Response(500, json={"detail": "boom"}))
    assert type(internal) is PCMError and str(internal) == "HTTP 500: boom"
    unknown = error_from_rpc(FakeRpcError(grpc.StatusCode.INTERNAL, "boom"))
    assert type(unknown) is PCMError and str(unknown) == "INTERNAL: boom"


def test_retry_policy_retries_only_what_is_safe() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise SelectorUnreachable("refused")
        return "ok"

    assert RetryPolicy(retries=2, backoff_s=0.0).call(flaky) == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(SelectorUnreachable):
        RetryPolicy(retries=1, backoff_s=0.0).call(flaky)
    assert len(calls) == 2

    def timing_out() -> None:
        calls.append(1)
        raise SelectorTimeout("late")

    calls.clear()
    with pytest.raises(SelectorTimeout):
        RetryPolicy(retries=3, backoff_s=0.0).call(timing_out)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy(retries=-1)
