"""`pcm-selector`: the selector's command line, one flag per PCM_* setting of its
pydantic-settings `Settings` (`settings_options`), defaults shown; a flag not given leaves the
setting to the environment, then to its default, and pydantic checks the values."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class SettingOption:
    """The flag of one setting: its keyword, type, flag and help, and the default `--help`
    shows (the option's own default is None: not given)."""

    name: str
    annotation: Any
    flag: str
    help: str
    show_default: str

    def parameter(self) -> inspect.Parameter:
        info = typer.Option(self.flag, help=self.help, show_default=self.show_default)
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=Annotated[self.annotation, info])


def settings_options(
    cls: Any,
    shown_defaults: Mapping[str, str] | None = None,
    extra_help: Mapping[str, str] | None = None,
) -> list[SettingOption]:
    """One option per field of a pydantic-settings class: `--name-with-dashes`, typed str for
    literals and anything not a plain int / float / bool, default None (= the environment,
    else the setting's default, which the help shows: `shown_defaults` replaces it where a
    plain value says too little). The help is the field's description and its environment
    variable, then `extra_help`'s words for it."""
    prefix = cls.model_config.get("env_prefix", "")
    shown_defaults, extra_help = shown_defaults or {}, extra_help or {}
    options = []
    for name, info in cls.model_fields.items():
        default = shown_defaults.get(name, info.default)
        if isinstance(default, bool):
            default = "true" if default else "false"
        description = info.description or name
        help_text = (
            f"{description[0].upper()}{description[1:]} (env {prefix}{name.upper()})."
            f"{extra_help.get(name, '')}"
        )
        kind = info.annotation if info.annotation in (int, float, bool) else str
        options.append(SettingOption(name=name, annotation=kind | None,
                                     flag="--" + name.replace("_", "-"), help=help_text,
                                     show_default=str(default)))
    return options


def command(
    options: Sequence[SettingOption], body: Callable[[dict[str, Any]], None], doc: str | None
) -> Callable[..., None]:
    """A function whose keyword parameters are `options` (register it with `app.command`); it
    calls `body` with the values by option name."""

    def run(**values: Any) -> None:
        body(values)

    params = [o.parameter() for o in options]
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    run.__doc__ = doc
    return run


# one flag per Settings field, the settings' own defaults shown
app.command("serve")(
    command(settings_options(Settings, _SHOWN_DEFAULTS, _EXTRA_HELP), serve, serve.__doc__)
)


if __name__ == "__main__":
    app()
