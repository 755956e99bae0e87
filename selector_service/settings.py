"""The selector's settings: environment variables `PCM_*` (DESIGN.md section 5), CLI flags.

`pcm-selector serve` flags override the environment; an empty variable (as docker compose
passes an unset pass-through) means the default.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PCM_", extra="ignore",
                                      env_ignore_empty=True, frozen=True)

    store: Literal["memory", "redis"] = Field(
        default="memory", description="phase-state store: memory (single process) or redis")
    redis_url: str = Field(
        default="redis://localhost:6379/0", description="used when store=redis", repr=False)
    host: str = Field(default="0.0.0.0", description="interface both servers bind to")
    grpc_port: int = Field(default=50051, ge=0, le=65535, description="gRPC port; 0: any free")
    http_port: int = Field(default=8000, ge=0, le=65535, description="HTTP port; 0: any free")
    auth_tokens: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="comma-separated bearer tokens; empty: no auth", repr=False)
    log_level: str = Field(default="INFO", description="CRITICAL|ERROR|WARNING|INFO|DEBUG")
    max_message_mb: int = Field(
        default=256, ge=1, le=2047,
        description="gRPC max send/receive message size and HTTP max body size, MiB (a full "
                    "LIBERO step is ~7.3 MB over gRPC, ~40 MB as JSON)")
    grace_period_s: float = Field(
        default=10.0, ge=0, description="on SIGTERM/SIGINT: how long in-flight calls may finish")
    shutdown_delay_s: float = Field(
        default=0.0, ge=0,
        description="on SIGTERM/SIGINT: how long to answer NOT_SERVING (gRPC health) and 503 "
                    "(/readyz) while still serving, before draining, so load balancers take "
                    "the replica out")
    max_trainers_per_run: int = Field(
        default=64, ge=1,
        description="distinct trainer label values per run in metrics; further trainers are "
                    'counted as trainer="other"')
    worker_threads: int = Field(
        default=16, ge=1, description="threads running the blocking application layer")

    @field_validator("auth_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().upper() or "INFO"
            if value not in LOG_LEVELS:
                raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_tokens)


def configure_logging(level: str) -> None:
    """Root logging at `level`, one line per record, to stderr."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(level)
    # Library internals stay at INFO or above even when we debug.
    quiet = max(logging.INFO, logging.getLevelName(level))
    for name in ("grpc", "asyncio", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(quiet)
