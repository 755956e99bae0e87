"""`pcm-selector`: the selector's command line (one flag per PCM_* setting, defaults shown)."""

from __future__ import annotations

import inspect
import logging
import os
import typing
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

# Settings without a plain default to show.
_SHOWN_DEFAULTS = {"auth_tokens": "unset: no auth",
                   "workers": "0: one per core with store=redis, 1 with store=memory"}
_EXTRA_HELP = {"auth_tokens": " Prefer the environment: flags show in process listings.",
               "redis_url": ""}


@app.callback()
def main() -> None:
    """PCM chunk selector: gRPC (pcm.v1.ChunkSelector) and HTTP, in one process or in
    `--workers N` processes sharing both ports."""


def _flag_type(annotation: Any) -> type:
    """The CLI type of a setting: str for literals and token lists, else its own type."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal or annotation is str:
        return str
    if annotation in (int, float, bool):
        return typing.cast(type, annotation)
    return str


def _parameters() -> list[inspect.Parameter]:
    """One keyword parameter per Settings field: `--name-with-dashes`, default None (= the
    environment, else the setting's default, which the help shows)."""
    params = []
    for name, info in Settings.model_fields.items():
        kind = _flag_type(info.annotation)
        default = _SHOWN_DEFAULTS.get(name, info.default)
        if isinstance(default, bool):
            default = "true" if default else "false"
        description = info.description or name
        help_text = (f"{description[0].upper()}{description[1:]} "
                     f"(env PCM_{name.upper()}).{_EXTRA_HELP.get(name, '')}")
        option = typer.Option(f"--{name.replace('_', '-')}", help=help_text,
                              show_default=str(default), rich_help_panel=None)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[kind | None, option]))
    return params


def serve(**flags: Any) -> None:
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


serve.__signature__ = inspect.Signature(_parameters())  # type: ignore[attr-defined]
serve.__annotations__ = {p.name: p.annotation for p in _parameters()}
app.command()(serve)


if __name__ == "__main__":
    app()
