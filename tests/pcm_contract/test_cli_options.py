"""`pcm_contract.cli_options`: options generated from config dataclasses (nested ones flattened)
and from pydantic-settings classes, and configs built back from option values."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from typer.testing import CliRunner

from pcm_contract import cli_options
from pcm_contract.cli_options import build, command, dataclass_options, settings_options

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


def test_settings_fields_become_options_that_default_to_the_environment() -> None:
    class S(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="APP_")
        port: int = Field(default=80, description="the port")
        store: str = Field(default="memory", description="where state lives")
        debug: bool = Field(default=False, description="debug mode")

    options = {o.name: o for o in settings_options(S, {"store": "memory (one process)"})}
    assert options["port"].flag == "--port" and options["port"].default is None
    assert options["port"].help == "The port (env APP_PORT)."
    assert options["store"].show_default == "memory (one process)"
    assert options["debug"].show_default == "false"


def test_the_module_imports_neither_side() -> None:
    tree = ast.parse(Path(cli_options.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    sides = ("selector_service", "trainer_client")
    assert not {m for m in imported if m and m.split(".")[0] in sides}
