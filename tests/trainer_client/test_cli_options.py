"""`trainer_client.cli_options`: options generated from config dataclasses (nested ones
flattened, renamed where the parent says), and configs built back from option values."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import typer
from typer.testing import CliRunner

from trainer_client.cli_options import build, command, dataclass_options

runner = CliRunner()


@dataclass
class Inner:
    lr: float = field(default=0.1, metadata={"help": "learning rate"})
    denominator: str = field(default="kept", metadata={"help": "set by the outer config"})
    epochs: int = field(default=1, metadata={"help": "epochs"})

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"--epochs {self.epochs}: must be >= 1")


@dataclass
class Outer:
    name: str = field(default="run", metadata={"help": "the run's name"})
    inner: Inner = field(
        default_factory=lambda: Inner(lr=0.5),
        metadata={"derived": ("denominator",), "help_for": {"lr": "the outer's learning rate"}},
    )
    quiet: bool = field(default=False, metadata={"help": "say less"})
    token: str | None = field(
        default=None, metadata={"help": "a secret", "envvar": "X_TOKEN", "show_default": False}
    )


def test_nested_configs_are_flattened_with_the_parents_defaults() -> None:
    options = {o.name: o for o in dataclass_options(Outer)}
    assert list(options) == ["name", "lr", "epochs", "quiet", "token"]  # derived: no option
    assert options["lr"].default == 0.5 and options["lr"].flag == "--lr"
    assert options["lr"].help == "the outer's learning rate"
    assert options["token"].envvar == "X_TOKEN" and options["token"].show_default is False


def test_build_routes_flat_values_into_the_nested_config() -> None:
    cfg = build(Outer, {"name": "a", "epochs": 3})
    assert cfg == Outer(name="a", inner=Inner(lr=0.5, epochs=3))
    assert build(Outer, {}) == Outer()
    with pytest.raises(ValueError, match="--epochs 0"):
        build(Outer, {"epochs": 0})
    with pytest.raises(TypeError, match="no option named nope"):
        build(Outer, {"nope": 1})


@dataclass
class Where:
    device: str = field(default="cpu", metadata={"help": "device"})
    threads: int = field(default=0, metadata={"help": "torch threads"})


@dataclass
class Light:
    where: Where = field(
        default_factory=Where,
        metadata={"unused": ("threads",), "help_for": {"device": "where it runs"}},
    )


def test_unused_nested_fields_get_no_option_and_keep_their_defaults() -> None:
    options = dataclass_options(Light)
    assert [(o.name, o.help) for o in options] == [("device", "where it runs")]
    assert build(Light, {"device": "cuda"}).where == Where(device="cuda", threads=0)
    with pytest.raises(TypeError, match="no option named threads"):
        build(Light, {"threads": 2})


@dataclass
class Grown(Inner):
    momentum: float = field(default=0.9, metadata={"help": "a new field"})


@dataclass
class Host:
    inner: Grown = field(default_factory=Grown)


def test_a_field_added_to_a_config_reaches_the_command_line() -> None:
    app = typer.Typer()
    seen: list[Host] = []
    app.command("go")(command(dataclass_options(Host), lambda v: seen.append(build(Host, v))))
    app.command("other")(command([], lambda v: None))
    help_text = runner.invoke(app, ["go", "--help"], env={"COLUMNS": "200"}).output
    assert "--momentum" in help_text and "a new field" in help_text and "0.9" in help_text
    assert runner.invoke(app, ["go", "--momentum", "0.5", "--epochs", "2"]).exit_code == 0
    assert seen[0].inner.momentum == 0.5 and seen[0].inner.epochs == 2


@dataclass(frozen=True)
class Run:
    mode: str = field(default="a", metadata={"help": "the mode"})
    seed: int = field(default=0, metadata={"help": "the seed"})


@dataclass
class Trainer:
    run: Run = field(
        default_factory=Run,
        metadata={"rename": {"mode": "algo"}, "help_for": {"mode": "the algorithm"}},
    )


def test_a_renamed_nested_field_has_the_parents_name_and_flag() -> None:
    options = {o.name: o for o in dataclass_options(Trainer)}
    assert list(options) == ["algo", "seed"]
    assert (options["algo"].flag, options["algo"].help) == ("--algo", "the algorithm")
    assert build(Trainer, {"algo": "b", "seed": 3}).run == Run(mode="b", seed=3)
    with pytest.raises(TypeError, match="no option named mode"):
        build(Trainer, {"mode": "b"})
