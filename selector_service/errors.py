"""The project's error types. Transports map them to HTTP statuses and gRPC codes."""

from __future__ import annotations


class PCMError(Exception):
    """Base of every error the selector raises on purpose."""

    http_status = 500
    grpc_code = "INTERNAL"


class InvalidArgument(PCMError, ValueError):
    """Bad input. `field` names the offending field, e.g. ``trajectories[3].action_features``."""

    http_status = 422
    grpc_code = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class NotFound(PCMError, KeyError):
    """Unknown run."""

    http_status = 404
    grpc_code = "NOT_FOUND"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:  # KeyError quotes its argument; keep the plain message
        return self.message


class Unauthenticated(PCMError):
    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class StoreUnavailable(PCMError):
    """The phase-state store cannot be reached (or keeps conflicting); retrying is safe."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
