"""The selector's settings: environment variables `PCM_*`, CLI flags (docs/design.md,
"Selector settings").

`pcm-selector serve` flags override the environment; an empty variable (as docker compose
passes an unset pass-through) means the default.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PCM_", extra="ignore",
                                      env_ignore_empty=True, frozen=True)

    store: Literal["memory", "redis"] = Field(
        default="memory", description="phase-state store: memory (single process) or redis")
    redis_url: str = Field(
        default="redis://localhost:6379/0",
        description="used when store=redis: redis://, rediss:// or unix:// for one Redis; "
                    "redis+cluster://HOST:PORT,HOST:PORT,... (rediss+cluster:// with TLS) for "
                    "a Redis Cluster, any of its nodes as startup nodes", repr=False)
    host: str = Field(
        default="127.0.0.1",
        description="interface both servers bind to (the container image sets 0.0.0.0)")
    grpc_port: int = Field(default=50051, ge=0, le=65535, description="gRPC port; 0: any free")
    http_port: int = Field(default=8000, ge=0, le=65535, description="HTTP port; 0: any free")
    auth_tokens: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="comma-separated bearer tokens; empty: no auth", repr=False)
    log_level: str = Field(default="INFO", description="CRITICAL|ERROR|WARNING|INFO|DEBUG")
    max_message_mb: int = Field(
        default=256, ge=1, le=2047,
        description="gRPC max send/receive message size, MiB (a full LIBERO step is ~7.3 MB)")
    max_body_mb: int = Field(
        default=64, ge=1, le=2047,
        description="HTTP max Select body, MiB (a full LIBERO step is ~40 MB as JSON); a larger "
                    "body is answered 413 before it is read")
    max_small_body_kb: int = Field(
        default=64, ge=1, le=1024 * 1024,
        description="HTTP max body of every other route (PUT run, outcomes), KiB")
    header_timeout_s: float = Field(
        default=10.0, gt=0,
        description="HTTP: a connection must send a request's headers within this many seconds "
                    "of opening (or of its previous answer), else it is closed")
    body_timeout_s: float = Field(
        default=60.0, gt=0,
        description="HTTP: a request body must arrive within this many seconds (408 after)")
    keep_alive_s: int = Field(
        default=5, ge=1, description="HTTP: idle keep-alive connections are closed after this")
    max_connections: int = Field(
        default=1024, ge=1,
        description="HTTP and gRPC: open connections at most (each); further connections are "
                    "closed at once (HTTP requests beyond it get 503)")
    max_concurrent_rpcs: int = Field(
        default=256, ge=1,
        description="gRPC: calls in progress at most; further calls get RESOURCE_EXHAUSTED")
    grpc_keepalive_s: float = Field(
        default=60.0, gt=0,
        description="gRPC: ping an idle client connection after this many seconds (dead peers "
                    "are dropped when the ping is not answered within 20 s)")
    grpc_max_connection_idle_s: float = Field(
        default=300.0, gt=0, description="gRPC: close a connection idle this long")
    grpc_max_connection_age_s: float = Field(
        default=3600.0, gt=0,
        description="gRPC: close a connection this old (clients reconnect; calls in flight get "
                    "30 s to finish)")
    grpc_handshake_timeout_s: float = Field(
        default=10.0, gt=0,
        description="gRPC: a new connection must finish its HTTP/2 handshake within this")
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
    max_tasks_per_run: int = Field(
        default=32, ge=1,
        description="distinct task label values per run in metrics; further tasks are counted "
                    'as task="other" (counters only)')
    max_runs: int = Field(
        default=32, ge=1,
        description="distinct run label values in metrics; further runs are counted as "
                    'run="other" (counters only)')
    metrics_run_ttl_s: float = Field(
        default=3600.0, gt=0,
        description="metrics series of a run not seen for this long are dropped (e.g. a run "
                    "deleted through another selector)")
    max_staleness: int = Field(
        default=256, ge=0,
        description="a select computes on a copy of its run's state at most this many commits "
                    "old; an older copy is refreshed and the selection computed again, once")
    workers: int = Field(
        default=0, ge=0, le=1024,
        description="server processes sharing the gRPC and HTTP ports (SO_REUSEPORT), "
                    "stateless over Redis; 0: one per available core with store=redis, 1 with "
                    "the memory store (which lives in one process, so it refuses more)")
    grpc_inline_select_chunks: int = Field(
        default=4096, ge=0,
        description="gRPC: a Select of at most this many chunks runs on the event loop instead "
                    "of a select thread while the store answers (no thread hand-off, no second "
                    "thread contending for the GIL); 0: every Select in a thread")
    worker_threads: int = Field(
        default=16, ge=1,
        description="threads running the blocking application layer (per worker process), "
                    "Selects apart")
    select_threads: int = Field(
        default=1, ge=1,
        description="threads Selects compute in (per worker process): more contend for "
                    "Python's GIL; a second overlaps one Select's store round trip with another's "
                    "computation, worth it where the round trip is long (Redis on another host)")
    docs_ui: bool = Field(
        default=False,
        description="serve Swagger UI at /docs (it loads its scripts from a CDN, so it is off "
                    "by default; /openapi.json is always served)")

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

    @model_validator(mode="after")
    def _workers_need_a_shared_store(self) -> Settings:
        if self.workers > 1 and self.store == "memory":
            raise ValueError(
                f"workers={self.workers} (PCM_WORKERS, --workers) needs store=redis "
                "(PCM_STORE=redis): the memory store lives inside one process, so workers "
                "would not share the phase state; use workers=1 or a Redis store")
        return self

    @property
    def worker_count(self) -> int:
        """The number of server processes `serve` runs (`workers`, 0 resolved)."""
        if self.workers > 0:
            return self.workers
        return available_cores() if self.store == "redis" else 1

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    @property
    def max_body_bytes(self) -> int:
        return self.max_body_mb * 1024 * 1024

    @property
    def max_small_body_bytes(self) -> int:
        return self.max_small_body_kb * 1024

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_tokens)


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota
    (a container started with --cpus N gets ceil(N))."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def configure_logging(level: str, prefix: str = "") -> None:
    """Root logging at `level`, one line per record, to stderr; `prefix` (a worker process's
    name) goes before the logger name."""
    logging.basicConfig(level=level,
                        format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s",
                        force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(level)
    # Library internals stay at INFO or above even when we debug.
    quiet = max(logging.INFO, logging.getLevelName(level))
    for name in ("grpc", "asyncio", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(quiet)
