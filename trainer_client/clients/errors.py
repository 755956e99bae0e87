"""The errors the clients add to the service's (pcm_contract.errors), which rejections are
final, and the exception for an error answer (the transports' one mapping).

A client raises the service's own exception types (InvalidArgument, NotFound, Conflict,
Unauthenticated, StoreUnavailable, PCMError), whichever transport carried the call. It adds two
for what only a client sees; both are StoreUnavailables, so the local fallback covers them.
"""

from __future__ import annotations

from pcm_contract.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    PCMError,
    StoreUnavailable,
    Unauthenticated,
)


class SelectorUnreachable(StoreUnavailable):
    """The selector could not be reached (connection refused or reset). Retrying is safe."""


class SelectorTimeout(StoreUnavailable):
    """The selector did not answer within the client's timeout. Not retried."""


# Rejections that no retry or replay can fix: a replayed entry that gets one is dropped.
FINAL_ERRORS = (InvalidArgument, NotFound, Conflict)


# The service's error answers, by HTTP status and by gRPC code: each error type says its own
# (pcm_contract.errors); 400 is a body that did not parse, 408 a body not sent in time, and a
# gRPC deadline the client's own timeout.
_ANSWERED: tuple[type[PCMError], ...] = (
    InvalidArgument, Conflict, NotFound, Unauthenticated, StoreUnavailable)
BY_HTTP_STATUS: dict[int, type[PCMError]] = {e.http_status: e for e in _ANSWERED} | {
    400: InvalidArgument, 413: InvalidArgument, 408: SelectorTimeout}
BY_GRPC_CODE: dict[str, type[PCMError]] = {e.grpc_code: e for e in _ANSWERED} | {
    "DEADLINE_EXCEEDED": SelectorTimeout}


def error_from_answer(kind: type[PCMError] | None, detail: str, field: str | None,
                      status: str) -> PCMError:
    """The exception for an error answer of the service: `kind` as its status says (None: a
    status the contract does not name, raised as a PCMError quoting `status`); `field` as the
    answer names it, else taken from a ``"field: message"`` detail."""
    if kind is InvalidArgument:
        field = field or detail.partition(":")[0] or "body"
        return InvalidArgument(field, detail.removeprefix(f"{field}: "))
    if kind is Conflict:
        field = field or "request_id"
        return Conflict(field, detail.removeprefix(f"{field}: "))
    if kind is NotFound:
        return NotFound(detail, field=field or "run_id")
    if kind is None:
        return PCMError(f"{status}: {detail}")
    return kind(detail)
