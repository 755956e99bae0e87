"""Command-line options generated from config dataclasses: the mechanism behind `pcm-train`
(its configs in `trainer_client.train.config`) and the `pcm-bench` commands that take a config.
Each field is declared once, with its default, its help and its checks (the config's own
`__post_init__`); its option follows, and `--help` shows its help and default.

- `dataclass_options(cls)`: one option per field of a config dataclass, `--field-name`, from
  the field's metadata: "help", and optionally "flag" (another flag name), "envvar",
  "show_default" (False: not shown), "cli" (False: no option) and "typer" (more settings of
  the typer option, e.g. {"exists": True} for a file); a field without a default is a
  required option. A field whose type is itself
  a dataclass (`TrainConfig.grpo: GRPOConfig`) is flattened: its fields become options of their
  own, with the defaults of the parent's default instance; the parent field's metadata "derived"
  names the nested fields the parent sets itself and "unused" those it does not use (neither
  gets an option; an unused one keeps its default), "help_for" replaces the help of nested
  fields where the parent's use of them needs other words, and "rename" gives nested fields
  another option name (and flag) in the parent (`TrainConfig`'s `--algo` is its run config's
  `mode`).
- `build(cls, values)`: the config from option values by name (what the command receives, or a
  flat dict of overrides), nested configs included.
- `command(options, body)`: the function typer registers as a command with these options; it
  calls `body(values)` with the values by option name.
- `config_command(app, name, cls, ...)`: registers `body(config)` as the command `name` of
  `app` whose flags are `cls`'s (what `pcm-train` and `pcm-bench` do for each command).

The selector's command line (`pcm-selector`, from its pydantic-settings `Settings`) is its own:
`selector_service.cli`.
"""

from __future__ import annotations

import contextlib
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass, replace
from typing import Annotated, Any, TypeVar, get_type_hints

import typer

C = TypeVar("C")
Body = Callable[[C], None]


@dataclass(frozen=True)
class Option:
    """One command-line option: the keyword the command receives and how typer shows it."""

    name: str  # the keyword argument (unique within a command)
    annotation: Any  # the value's type
    default: Any
    flag: str  # e.g. "--clip-coef-low"
    help: str = ""
    envvar: str | None = None
    show_default: bool | str = True
    typer_settings: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"exists": True}

    def parameter(self) -> inspect.Parameter:
        """A keyword parameter annotated for typer (a bool field gets --flag/--no-flag; a field
        without a default, a required option)."""
        decls = [f"{self.flag}/--no-{self.flag[2:]}" if self.annotation is bool else self.flag]
        info = typer.Option(
            *decls, help=self.help, envvar=self.envvar, show_default=self.show_default,
            **self.typer_settings,
        )
        return inspect.Parameter(
            self.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=self.default,
            annotation=Annotated[self.annotation, info],
        )


# ---- config dataclasses -----------------------------------------------------------------------


def dataclass_options(cls: type, defaults: Any = None) -> list[Option]:
    """The options of a config dataclass, nested dataclass fields flattened (see the module
    docstring); `defaults`: an instance whose values are shown instead of the fields' own."""
    hints = get_type_hints(cls)
    options: list[Option] = []
    for f in fields(cls):
        if not f.init or f.metadata.get("cli", True) is False:
            continue
        default = _default(f, defaults)
        if _is_config(hints[f.name]):
            skip = _not_options(f)
            help_for, rename = f.metadata.get("help_for", {}), f.metadata.get("rename", {})
            nested = dataclass_options(hints[f.name], default)
            options += [
                replace(
                    o,
                    help=help_for.get(o.name, o.help),
                    name=rename.get(o.name, o.name),
                    flag="--" + rename[o.name].replace("_", "-") if o.name in rename else o.flag,
                )
                for o in nested
                if o.name not in skip
            ]
            continue
        meta = f.metadata
        options.append(
            Option(
                name=f.name,
                annotation=hints[f.name],
                default=default,
                flag=meta.get("flag", "--" + f.name.replace("_", "-")),
                help=meta.get("help", ""),
                envvar=meta.get("envvar"),
                show_default=meta.get("show_default", True),
                typer_settings=meta.get("typer", {}),
            )
        )
    seen: set[str] = set()
    for o in options:
        if o.name in seen:
            raise TypeError(f"{cls.__name__}: option {o.name!r} is defined twice; rename one")
        seen.add(o.name)
    return options


def build(cls: type[C], values: Mapping[str, Any]) -> C:
    """The config `cls` from option values by name; options not given keep their defaults, and
    a nested config starts from the parent's default instance. A name that is no option of
    `cls` raises TypeError; a bad value, the config's own ValueError (which says how to fix
    it)."""
    rest = dict(values)
    config = _build(cls, rest, base=None)
    if rest:
        raise TypeError(f"{cls.__name__}: no option named {', '.join(sorted(rest))}")
    return config


def _build(
    cls: type[C], values: dict[str, Any], base: Any, not_options: frozenset[str] = frozenset()
) -> C:
    """`not_options`: names that are no options here (the parent sets them itself or does not use
    them): they keep `base`'s values."""
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if not f.init or f.name in not_options:
            continue
        if f.name in values:
            kwargs[f.name] = values.pop(f.name)
        elif _is_config(hints[f.name]):
            skip = _not_options(f)
            rename = f.metadata.get("rename", {})
            # a renamed field's own name is no option here: held back (`build` reports it)
            held = {name: values.pop(name) for name in rename if name in values}
            for name, option in rename.items():
                if option in values:  # the nested field's value, under its field name
                    values[name] = values.pop(option)
            if (_names(hints[f.name]) - skip) & values.keys():
                kwargs[f.name] = _build(hints[f.name], values, _default(f, base), skip)
            values.update(held)
    if base is not None:
        return typing.cast(C, replace(base, **kwargs))
    return cls(**kwargs)


def _not_options(f: Field[Any]) -> frozenset[str]:
    """The fields of a nested config field `f` that get no option: "derived" and "unused"."""
    return frozenset(f.metadata.get("derived", ())) | frozenset(f.metadata.get("unused", ()))


def _names(cls: type) -> set[str]:
    """Every field name of a config, its nested configs' included (by their options' names
    where the parent renames them)."""
    hints = get_type_hints(cls)
    out: set[str] = set()
    for f in fields(cls):
        if _is_config(hints[f.name]):
            rename = f.metadata.get("rename", {})
            out |= {rename.get(n, n) for n in _names(hints[f.name])}
        else:
            out.add(f.name)
    return out


def _is_config(annotation: Any) -> bool:
    return isinstance(annotation, type) and is_dataclass(annotation)


def _default(f: Field[Any], instance: Any) -> Any:
    """A field's default: `instance`'s value if given, else its default (or factory's); a
    field without one has none (a required option)."""
    if instance is not None:
        return getattr(instance, f.name)
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return inspect.Parameter.empty


# ---- the command ------------------------------------------------------------------------------


def command(
    options: Sequence[Option],
    body: Callable[[dict[str, Any]], None],
    doc: str | None = None,
) -> Callable[..., None]:
    """A function whose keyword parameters are `options` (register it with `app.command`); it
    calls `body` with the values by option name. `doc`: the command's help."""

    def run(**values: Any) -> None:
        body(values)

    params = [o.parameter() for o in options]
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    run.__doc__ = doc
    return run


def config_command(
    app: typer.Typer,
    name: str,
    cls: type[C],
    *,
    report: Callable[[str], None],
    run_errors: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> Callable[[Body[C]], Body[C]]:
    """A decorator: register `body(config)` as the command `name` of `app`, its flags `cls`'s
    fields, nested configs flattened. A bad value exits 2 after `report("error: ...")` with the
    config's message, which says how to fix it; `body` runs inside `run_errors()` (the command's
    own errors that end it with one line)."""

    def register(body: Body[C]) -> Body[C]:
        def run(values: dict[str, Any]) -> None:
            try:
                config = build(cls, values)
            except ValueError as exc:
                report(f"error: {exc}")
                raise typer.Exit(2) from None
            with run_errors():
                body(config)

        app.command(name)(command(dataclass_options(cls), run, body.__doc__))
        return body

    return register
