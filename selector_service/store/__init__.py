"""Phase-state stores behind one interface: in-memory (embedded default) and Redis."""

from selector_service.store.base import (
    CommitResult,
    CommitStatus,
    FlatAnswer,
    PhaseStore,
    RequestKind,
    RunSnapshot,
)
from selector_service.store.memory import MemoryStore

__all__ = [
    "CommitResult",
    "CommitStatus",
    "FlatAnswer",
    "MemoryStore",
    "PhaseStore",
    "RequestKind",
    "RunSnapshot",
]
