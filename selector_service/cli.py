"""`pcm-selector`: the selector's command line (one flag per PCM_* setting, defaults shown),
generated from `Settings` by `pcm_contract.cli_options`."""

from __future__ import annotations

import logging
import os
from typing import Any

import typer
from pydantic import ValidationError

from pcm_contract.cli_options import command, settings_options
from selector_service.settings import Settings, configure_logging

# One BLAS thread per selector process: selections are small and many run at once, and BLAS
# thread pools only fight over the cores (measured: ~3x more CPU per select with the default).
# Set before numpy is first imported (the imports above do not load it); the environment wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

app = typer.Typer(name="pcm-selector", help="PCM chunk selector service.",
                  no_args_is_help=True, add_completion=False)
log = logging.getLogger("selector_service")

# Settings without a plain default to show.
_SHOWN_DEFAULTS = {"auth_tokens": "unset: no auth",
                   "workers": "0: one per core with store=redis, 1 with store=memory"}
_EXTRA_HELP = {"auth_tokens": " Prefer the environment: flags show in process listings.",
               "redis_url": ""}


@app.callback()
def main() -> None:
    """PCM chunk selector: gRPC (pcm.v1.ChunkSelector) and HTTP, in one process or in
    `--workers N` processes sharing both ports."""


def serve(flags: dict[str, Any]) -> None:
    """Serve gRPC and HTTP (/v1/runs/..., /healthz, /readyz, /metrics) until SIGTERM/SIGINT.
    Flags override the PCM_* environment."""
    overrides = {k: v for k, v in flags.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        name = ".".join(str(p) for p in err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        raise typer.BadParameter(f"{name}: {message}" if name else message) from None
    configure_logging(settings.log_level)
    log.debug("settings: %r", settings)

    workers = settings.worker_count
    if workers > 1:  # a supervisor: it imports none of the servers' heavy modules
        from selector_service.workers import serve_workers

        raise typer.Exit(serve_workers(settings, workers))

    from selector_service.server import serve as run_server  # heavy imports after parsing

    run_server(settings)


# one flag per Settings field (pcm_contract.cli_options), the settings' own defaults shown
app.command("serve")(
    command(settings_options(Settings, _SHOWN_DEFAULTS, _EXTRA_HELP), serve, serve.__doc__)
)


if __name__ == "__main__":
    app()
