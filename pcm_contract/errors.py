"""The project's error types. Transports map them to HTTP statuses and gRPC codes.

Every message that quotes client input quotes it through `clip`, so an error never echoes a
large input back (a 100 KB run_id would overflow gRPC's metadata limit).
"""

from __future__ import annotations

from pydantic import ValidationError

MAX_QUOTED = 64  # characters of an input value quoted in an error message
MAX_MESSAGE = 512  # characters of an error message as sent to the client


def clip(value: object, limit: int = MAX_QUOTED) -> str:
    """`repr(value)` cut to about `limit` characters (with the original length when cut)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str | bytes) else len(text)
    return f"{text[:limit]}... ({size} chars)"


def clip_message(message: str, limit: int = MAX_MESSAGE) -> str:
    return message if len(message) <= limit else message[:limit] + "..."


class PCMError(Exception):
    """Base of every error the selector raises on purpose."""

    http_status = 500
    grpc_code = "INTERNAL"
    field: str | None = None


class InvalidArgument(PCMError, ValueError):
    """Bad input. `field` names the offending field, e.g. ``trajectories[3].action_features``."""

    http_status = 422
    grpc_code = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str) -> None:
        self.field = clip_message(field, 128)
        self.message = clip_message(message)
        super().__init__(f"{self.field}: {self.message}")


class PayloadTooLarge(InvalidArgument):
    """A request body over the configured size (HTTP 413; field ``body``)."""

    http_status = 413

    def __init__(self, message: str) -> None:
        super().__init__("body", message)


class RequestTimeout(PCMError):
    """The client did not send the request body in time (HTTP 408)."""

    http_status = 408
    grpc_code = "DEADLINE_EXCEEDED"
    field = "body"


class Conflict(PCMError):
    """An idempotency key reused for a different request (HTTP 409, gRPC ALREADY_EXISTS)."""

    http_status = 409
    grpc_code = "ALREADY_EXISTS"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = clip_message(message)
        super().__init__(f"{field}: {self.message}")


class NotFound(PCMError, KeyError):
    """Unknown run (field ``run_id``) or unknown selection (field ``selection_id``)."""

    http_status = 404
    grpc_code = "NOT_FOUND"

    def __init__(self, message: str, field: str = "run_id") -> None:
        self.message = clip_message(message)
        self.field = field
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError quotes its argument; keep the plain message
        return self.message


class Unauthenticated(PCMError):
    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class StoreUnavailable(PCMError):
    """The phase-state store cannot be reached (or keeps conflicting); retrying is safe."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


def invalid_from_validation(exc: ValidationError) -> InvalidArgument:
    err = exc.errors(include_url=False)[0]
    return InvalidArgument(field_path(err["loc"]) or "body", err["msg"])


def field_path(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """('trajectories', 2, 'action_features') -> 'trajectories[2].action_features'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
