"""The fields of the config dataclasses (`pcm-train`'s in `trainer_client.train.config`, the
actor update's `trainer_client.grpo.GRPOConfig`, `pcm-bench`'s) and their one check.

A field is declared once: `opt(default, help, ge=..., ...)` gives its default, its help (the
flag's, `trainer_client.cli_options`) and what values it allows, in the metadata the selector's
run config uses (`pcm_contract.run_config.option`: ge, gt, le, lt, hint). A config's
`__post_init__` calls `check_fields(self)`: every bounded field is checked by the run config's
own check (`pcm_contract.run_config.problem`), and a bad value is a ValueError that names the
flag and says how to fix it, e.g. `--steps 1: must be >= 2`. A bound that is not a constant
(it depends on another field) is checked with `check_bound`; a choice among names with
`check_choice`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import field, fields
from typing import Any

from pcm_contract.run_config import problem, value_problem

BOUNDS = ("ge", "gt", "le", "lt", "choices", "min_positive")


def opt(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None, hint: str = "", **meta: Any) -> Any:
    """A config field: its default, its flag's `help`, the bounds of its values (ge / gt / le /
    lt; `hint`: what the error adds, e.g. what 0 means) and more flag metadata (flag, envvar,
    show_default, cli=False, typer: `trainer_client.cli_options`)."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return field(default=default, metadata={"help": help, **bounds,
                                            **({"hint": hint} if hint else {}), **meta})


def flag(name: str) -> str:
    """A field's flag: `keep_fraction` -> `--keep-fraction`."""
    return "--" + name.replace("_", "-")


def check_fields(config: Any, *, skip: Collection[str] = (), only: Collection[str] | None = None,
                 rename: Mapping[str, str] | None = None) -> None:
    """Check every field of `config` whose metadata bounds its values, in field order (not
    `skip`; only those in `only` if given); None (an optional field not set) is allowed. A bad
    value raises ValueError `--flag value: why`; `rename` gives a field's flag another name."""
    for f in fields(config):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        value = getattr(config, f.name)
        if value is None or not any(f.metadata.get(k) is not None for k in BOUNDS):
            continue
        why = problem(f, value)
        if why is not None:
            raise ValueError(f"{flag((rename or {}).get(f.name, f.name))} {value!r}: {why}")


def check_bound(name: str, value: float, *, ge: float | None = None, gt: float | None = None,
                le: float | None = None, lt: float | None = None, hint: str = "") -> None:
    """The check of `check_fields` for a bound given here (one that depends on other fields)."""
    kind = int if isinstance(value, int) else float
    why = value_problem(value, kind, {"ge": ge, "gt": gt, "le": le, "lt": lt, "hint": hint})
    if why is not None:
        raise ValueError(f"{flag(name)} {value!r}: {why}")


def check_choice(name: str, value: str, choices: Collection[str]) -> None:
    """`value` is one of `choices`; else a ValueError naming the flag and the choices."""
    if value not in choices:
        raise ValueError(f"{flag(name)} {value!r}: use one of {' | '.join(choices)}")
