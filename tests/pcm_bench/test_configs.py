"""Every `pcm-bench` command takes its config object: its flags are the config's fields, and a bad
value is refused (exit 2) with a message that names the flag and says how to fix it."""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pcm_bench.cli import app
from pcm_bench.core import CoreConfig
from pcm_bench.estimator import EstimatorConfig
from pcm_bench.grad import GradConfig
from pcm_bench.learning import LearningConfig
from pcm_bench.replay import ReplayConfig
from pcm_bench.rollout import RolloutBenchConfig
from pcm_bench.selector import SelectorBenchConfig
from pcm_bench.timemodel import TimeModelConfig
from trainer_client.cli_options import build, dataclass_options

COMMANDS: dict[str, type] = {
    "core": CoreConfig, "selector": SelectorBenchConfig, "grad": GradConfig,
    "learning": LearningConfig, "timemodel": TimeModelConfig, "estimator": EstimatorConfig,
    "replay": ReplayConfig, "rollout": RolloutBenchConfig,
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_its_configs_flags(name: str) -> None:
    command = next(c for c in app.registered_commands if c.name == name)
    assert command.callback is not None
    params = list(inspect.signature(command.callback).parameters)
    assert params == [o.name for o in dataclass_options(COMMANDS[name])]
    # a field without a flag is one a caller in Python sets (no option, its default kept)
    flagless = {f.name for f in fields(COMMANDS[name]) if f.metadata.get("cli") is False}
    assert not flagless & set(params)


def test_list_flags_are_parsed_from_their_comma_separated_text(tmp_path: Path) -> None:
    assert GradConfig(keep_fractions="0.1, 0.5").fractions == (0.1, 0.5)
    sel = SelectorBenchConfig(clients="1,8", selector_env=["A=1", "B=x=y"])
    assert sel.cells()[2] == (1, 8) and sel.env_vars == {"A": "1", "B": "x=y"}
    replay = ReplayConfig(init=tmp_path / "x.pt", at="1,3", runs="a, b")
    assert replay.at_list == [1, 3] and replay.run_dirs == [Path("a"), Path("b")]
    learning = build(LearningConfig, {"algos": "grpo,pcm-ht", "lr": 1e-4})
    assert learning.algo_list == ["grpo", "pcm-ht"] and learning.overrides == {"lr": 1e-4}


BAD: list[tuple[type, dict[str, Any], str]] = [
    (CoreConfig, {"repeats": 5}, "--repeats 5: must be >= 10"),
    (GradConfig, {"keep_fractions": "0,0.2"}, "--keep-fractions '0,0.2': use fractions in (0, 1]"),
    (GradConfig, {"pack_memory_ratio": 2.0}, "--pack-memory-ratio 2.0: must be in (0, 1]"),
    (SelectorBenchConfig, {"transports": "grpc,udp"}, "--transports: unknown udp; use some of"),
    (SelectorBenchConfig, {"clients": "1,x"}, "--clients '1,x': use a comma-separated list of"),
    (SelectorBenchConfig, {"selector_env": ["NO_EQUALS"]}, "--selector-env 'NO_EQUALS': use "
                                                           "KEY=VALUE"),
    (LearningConfig, {"steps": 1}, "--steps 1: must be >= 2"),
    (LearningConfig, {"budget_s": 0.0}, "--budget-s 0.0: must be > 0"),
    (LearningConfig, {"algos": "grpo,ppo"}, "--algos: unknown ppo; use some of grpo"),
    (ReplayConfig, {"init": "x.pt", "at": "1,x"}, "--at '1,x': use a comma-separated list of"),
    (ReplayConfig, {"init": "x.pt", "eval_batches": 1}, "--eval-batches 1: must be >= 2"),
    (TimeModelConfig, {"init": "x.pt", "steps": 2}, "--steps 2: must be >= 3"),
]


@pytest.mark.parametrize(("cls", "values", "message"), BAD,
                         ids=[f"{cls.__name__}-{next(iter(v))}" for cls, v, _ in BAD])
def test_a_bad_value_names_its_flag_and_the_fix(cls: type, values: dict[str, Any],
                                                message: str) -> None:
    with pytest.raises(ValueError) as err:
        build(cls, values)
    assert message in str(err.value)


def test_the_cli_exits_2_with_the_configs_message() -> None:
    r = CliRunner().invoke(app, ["core", "--repeats", "5"])
    assert r.exit_code == 2 and "--repeats 5: must be >= 10" in r.output
