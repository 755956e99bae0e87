"""`pcm-selector`: the selector's command line (flags mirror the PCM_* settings)."""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from selector_service.settings import Settings, configure_logging

# One BLAS thread per selector process: selections are small and many run at once, and BLAS
# thread pools only fight over the cores (measured: ~3x more CPU per select with the default).
# Set before numpy is first imported (the imports above do not load it); the environment wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

app = typer.Typer(name="pcm-selector", help="PCM chunk selector service.",
                  no_args_is_help=True, add_completion=False)
log = logging.getLogger("selector_service")


@app.callback()
def main() -> None:
    """PCM chunk selector: gRPC (pcm.v1.ChunkSelector) and HTTP in one process."""


@app.command()
def serve(
    store: Annotated[str | None, typer.Option(
        help="Phase-state store: memory or redis [env PCM_STORE; default memory]")] = None,
    redis_url: Annotated[str | None, typer.Option(
        help="Redis URL when --store redis [env PCM_REDIS_URL]")] = None,
    host: Annotated[str | None, typer.Option(
        help="Interface to bind [env PCM_HOST; default 0.0.0.0]")] = None,
    grpc_port: Annotated[int | None, typer.Option(
        help="gRPC port, 0 = any free [env PCM_GRPC_PORT; default 50051]")] = None,
    http_port: Annotated[int | None, typer.Option(
        help="HTTP port, 0 = any free [env PCM_HTTP_PORT; default 8000]")] = None,
    auth_tokens: Annotated[str | None, typer.Option(
        help="Comma-separated bearer tokens; unset = no auth [env PCM_AUTH_TOKENS]. Prefer "
             "the environment: flags show in process listings.")] = None,
    log_level: Annotated[str | None, typer.Option(
        help="CRITICAL|ERROR|WARNING|INFO|DEBUG [env PCM_LOG_LEVEL; default INFO]")] = None,
    max_message_mb: Annotated[int | None, typer.Option(
        help="Max gRPC message / HTTP body, MiB [env PCM_MAX_MESSAGE_MB; default 256]")] = None,
    grace_period_s: Annotated[float | None, typer.Option(
        help="Seconds in-flight calls may take to finish on shutdown "
             "[env PCM_GRACE_PERIOD_S; default 10]")] = None,
    shutdown_delay_s: Annotated[float | None, typer.Option(
        help="Seconds to report NOT_SERVING before draining on shutdown "
             "[env PCM_SHUTDOWN_DELAY_S; default 0]")] = None,
    max_trainers_per_run: Annotated[int | None, typer.Option(
        help="Trainer label values per run in metrics [env PCM_MAX_TRAINERS_PER_RUN; "
             "default 64]")] = None,
    worker_threads: Annotated[int | None, typer.Option(
        help="Threads for the blocking application layer [env PCM_WORKER_THREADS; "
             "default 16]")] = None,
) -> None:
    """Serve gRPC and HTTP (/v1/runs/..., /healthz, /readyz, /metrics) until SIGTERM/SIGINT."""
    overrides: dict[str, Any] = {
        k: v for k, v in {
            "store": store, "redis_url": redis_url, "host": host, "grpc_port": grpc_port,
            "http_port": http_port, "auth_tokens": auth_tokens, "log_level": log_level,
            "max_message_mb": max_message_mb, "grace_period_s": grace_period_s,
            "shutdown_delay_s": shutdown_delay_s, "max_trainers_per_run": max_trainers_per_run,
            "worker_threads": worker_threads,
        }.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        name = ".".join(str(p) for p in err["loc"])
        raise typer.BadParameter(f"{name}: {err['msg']}") from None
    configure_logging(settings.log_level)
    log.debug("settings: %r", settings)

    from selector_service.server import serve as run_server  # heavy imports after parsing

    run_server(settings)


if __name__ == "__main__":
    app()
