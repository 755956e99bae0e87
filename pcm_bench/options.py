"""What the `pcm-bench` commands' config dataclasses share: the --json option and
comma-separated lists. Each command's config is one dataclass, a field per flag with its default,
help and bounds (`trainer_client.config_fields.opt`); `pcm_bench.cli` derives the command's flags
from it (`trainer_client.cli_options`), and its `__post_init__` checks the values as every
config does (`trainer_client.config_fields.check_fields`), each error naming the flag and how to
fix it. `at_least` and `positive` are that check for bounds a config states in its
`__post_init__` instead of on its fields."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from trainer_client.config_fields import check_bound, flag

__all__ = ["as_paths", "at_least", "flag", "json_option", "one_of", "positive", "split"]

T = TypeVar("T")


def json_option(help: str = "write the figures here as JSON") -> dict[str, Any]:
    """The metadata of the optional `--json PATH` field: `json_path: Path | None =
    field(default=None, metadata=json_option())`."""
    return {"help": help, "flag": "--json"}


def as_paths(config: object, *names: str) -> None:
    """Make the named fields of `config` Paths (a caller may pass str), None left as is."""
    for name in names:
        value = getattr(config, name)
        if value is not None:
            setattr(config, name, Path(value))


def split(value: str, cast: Callable[[str], T], name: str) -> tuple[T, ...]:
    """A comma-separated flag value as a tuple (blank items dropped); an item that `cast`
    refuses is a ValueError naming the flag."""
    try:
        return tuple(cast(v.strip()) for v in value.split(",") if v.strip())
    except ValueError:
        kind = getattr(cast, "__name__", "value")
        raise ValueError(f"{flag(name)} {value!r}: use a comma-separated list of {kind}s, e.g. "
                         f"{flag(name)} 1,2") from None


def one_of(name: str, values: Sequence[str], choices: Sequence[str]) -> None:
    """Every item of a list flag is among `choices`, and there is at least one."""
    unknown = [v for v in values if v not in choices]
    if unknown or not values:
        raise ValueError(f"{flag(name)}: unknown {', '.join(unknown) or '(none given)'}; use "
                         f"some of {', '.join(choices)}, comma-separated")


def at_least(config: object, **minimums: float) -> None:
    """Each named field of `config` is >= its minimum (checked in this order)."""
    for name, minimum in minimums.items():
        check_bound(name, getattr(config, name), ge=minimum)


def positive(config: object, *names: str) -> None:
    """Each named field of `config` is > 0 (None: not set, allowed)."""
    for name in names:
        value = getattr(config, name)
        if value is not None:
            check_bound(name, value, gt=0)
