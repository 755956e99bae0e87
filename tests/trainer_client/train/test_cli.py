"""`pcm-train`: flags generated from the configs, errors that say how to fix, eval, sft, and a
tiny demo end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pcm_contract.run_config import RunConfigSchema
from tests.fixtures.training import MAX_STEPS, TASK
from trainer_client.cli import app
from trainer_client.train.config import TrainConfig, request_id, sanitize_id

runner = CliRunner()
REPO = Path(__file__).resolve().parents[3]


def test_help_lists_the_commands_and_the_rl_contract_flags() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "sft", "rl", "eval"):
        assert command in result.output
    result = runner.invoke(app, ["rl", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in (
        "--algo",
        "--selector",
        "--env",
        "--run-id",
        "--out",
        "--init",
        "--steps",
        "--seed",
        "--group-size",
        "--init-states",
        "--keep-fraction",
        "--phases",
        "--segmenter",
        "--trainer-id",
        "--token",
        "--resume",
        "PCM_AUTH_TOKEN",
        # the GRPO config's fields, flattened into flags of their own
        "--lr",
        "--micro-batch",
        "--aggregation",
        "--max-grad-norm",
        "--clip-coef-low",
        "--ppo-epochs",
        "--kl-coef",
    ):
        assert flag in result.output, flag
    assert "--loss-denominator" not in result.output  # derived from --weighting


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rl", "--algo", "ppo"], "use one of pcm | grpo | random"),
        (["rl", "--selector", "tcp://x:1"], "grpc://HOST:PORT"),
        (["rl", "--env", "metaworld:nope-v3"], "unknown MetaWorld task"),
        (["rl", "--run-id", "bad id!"], "letters, digits"),
        (["rl", "--group-size", "1"], "GRPO compares within a group"),
        (["rl", "--micro-batch", "rows:x"], "rows:N"),
        (["rl", "--micro-batch", "pack:0"], "pack:N"),
        (["rl", "--micro-batch", "chunks"], "'pack'"),
        (["rl", "--ppo-epochs", "0"], "--ppo-epochs 0: must be >= 1"),
        (["eval", "--env", "libero:libero_object:0", "--episodes", "60"], "50 initial states"),
    ],
)
def test_bad_flags_exit_2_with_how_to_fix(argv: list[str], message: str) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    assert message in result.output


def test_token_comes_from_the_environment_and_never_reaches_disk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PCM_AUTH_TOKEN", "s3cret")
    cfg = TrainConfig()
    assert cfg.token == "s3cret" and cfg.to_dict()["token"] == "***"
    assert cfg.run_id == "pcm-pick-place-v3-s0" and cfg.trainer_id


def test_the_rl_config_is_composed_of_the_grpo_config() -> None:
    """One definition per field: --lr and --micro-batch are GRPOConfig's, with the RL defaults;
    the loss denominator follows the selector weighting."""
    from trainer_client.cli_options import build
    from trainer_client.grpo import GRPOConfig

    cfg = TrainConfig()
    assert isinstance(cfg.grpo, GRPOConfig) and not hasattr(cfg, "lr")
    # the adaptive budget's Horvitz-Thompson weights divide by the full count
    assert (cfg.grpo.lr, cfg.grpo.micro_batch, cfg.loss_denominator) == (
        3e-6,
        "rows:32",
        "full",
    )
    assert (cfg.selection.budget_rule, cfg.selection.weighting) == ("auto", "ht")
    cfg = build(TrainConfig, {"weighting": "mean", "budget_rule": "fixed", "lr": 1e-4,
                              "ppo_epochs": 2})
    assert (cfg.grpo.lr, cfg.grpo.ppo_epochs, cfg.loss_denominator) == (1e-4, 2, "kept")
    assert cfg.to_dict()["grpo"]["lr"] == 1e-4


def test_every_command_config_is_composed_of_one_runtime() -> None:
    """--num-workers, --threads, --progress, --device, --precision (and --parallel for rl) are
    declared once, in Runtime: each command has those it uses, with Runtime's defaults, built
    from flat values and checked by Runtime's checks."""
    from dataclasses import fields

    from trainer_client.cli_options import build, dataclass_options
    from trainer_client.train.config import EvalConfig, Runtime, SFTConfig
    from trainer_client.train.demo import DemoConfig

    every = {f.name for f in fields(Runtime)}
    used = {
        TrainConfig: every,
        SFTConfig: every - {"parallel"},
        EvalConfig: {"num_workers", "device", "precision"},
    }
    for cls, names in used.items():
        assert cls().runtime == Runtime() and not every & {f.name for f in fields(cls)}
        options = {o.name: o for o in dataclass_options(cls)}
        assert every & options.keys() == names, cls
        assert all(options[n].default == getattr(Runtime(), n) for n in names)
        for name in every - names:
            with pytest.raises(TypeError, match=f"no option named {name}"):
                build(cls, {name: getattr(Runtime(), name)})
    cfg = build(TrainConfig, {"device": "cpu", "threads": 1, "parallel": "fsdp"})
    assert cfg.runtime == Runtime(threads=1, device="cpu", parallel="fsdp")
    assert cfg.to_dict()["runtime"]["device"] == "cpu"
    assert DemoConfig.quick(Path("out")).runtime == Runtime(num_workers=0, threads=1)
    with pytest.raises(ValueError, match="--num-workers -2"):
        build(SFTConfig, {"num_workers": -2})
    with pytest.raises(ValueError, match="--threads -1"):
        Runtime(threads=-1)


def test_ids_are_valid_and_deterministic() -> None:
    assert sanitize_id("my host_1 (docker)") == "my-host_1--docker-"
    assert request_id("run", "t1", 7) == request_id("run", "t1", 7) == "run/t1/step7"


def test_sft_and_eval_commands(tmp_path: Path) -> None:
    out = tmp_path / "sft"
    result = runner.invoke(
        app,
        [
            "sft",
            "--env",
            "metaworld:reach-v3",
            "--out",
            str(out),
            "--episodes",
            "2",
            "--iters",
            "3",
            "--preset",
            "tiny",
            "--max-steps",
            "16",
            "--eval-episodes",
            "0",
            "--num-workers",
            "0",
            "--threads",
            "1",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "sft.pt").is_file() and "BC loss" in result.output
    report = tmp_path / "eval.json"
    result = runner.invoke(
        app,
        [
            "eval",
            "--checkpoint",
            str(out / "sft.pt"),
            "--env",
            "metaworld:reach-v3",
            "--episodes",
            "2",
            "--max-steps",
            "16",
            "--num-workers",
            "0",
            "--json",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "sampled success" in result.output and "deterministic success" in result.output
    figures = json.loads(report.read_text())["results"]
    assert figures["sampled"]["episodes"] == 2 and figures["deterministic"]["init_states"] == [
        50_000,
        50_001,
    ]
    result = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "missing.pt")])
    assert result.exit_code == 2 and "pcm-train sft" in result.output


def test_eval_on_an_env_of_another_shape_is_one_line_naming_both(tmp_path: Path) -> None:
    from trainer_client.policy import PolicyConfig, VLAPolicy
    from trainer_client.train.checkpoint import save_policy

    # a LIBERO-shaped policy (7-d actions, 9-d proprio) evaluated on MetaWorld (4-d, 39-d)
    ckpt = save_policy(tmp_path / "libero.pt", VLAPolicy(PolicyConfig.preset(
        "tiny", action_dim=7, state_dim=9)))
    result = runner.invoke(app, ["eval", "--checkpoint", str(ckpt), "--env",
                                 "metaworld:reach-v3", "--episodes", "1", "--num-workers", "0"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "action_dim 7 != env's 4" in line and "state_dim 9 != env's 39" in line


def test_a_libero_command_without_the_extra_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # LIBERO is installed here, so "not installed" is faked at the one place that asks
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "libero" else real(name, *a))
    for argv in (["rl", "--env", "libero:libero_object:0"],
                 ["eval", "--checkpoint", "x.pt", "--env", "libero:libero_object:0"]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 2, result.output
        line = result.output.strip()
        assert "\n" not in line and "pip install 'pcm[libero]'" in line, line


@pytest.mark.slow
def test_quick_demo_runs_grpo_and_pcm_side_by_side(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trainer_client.cli", "demo", "--quick", "--out",
         str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "demo"
    for path in ("sft/sft.pt", "grpo/metrics.jsonl", "pcm/metrics.jsonl", "pcm/final.pt",
                 "demo.json", "demo.png"):
        assert (out / path).is_file(), path
    assert (out / "demo.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "demo.json").read_text())
    assert set(summary["algos"]) == {"grpo", "pcm"}
    for a in summary["algos"].values():
        assert {"steps", "heldout_start", "heldout_end", "s_per_step", "rollout_share",
                "select_share", "backward_share"} <= set(a) and a["steps"] == 2
        assert a["rollout_share"] + a["select_share"] + a["backward_share"] == pytest.approx(1)
    pcm = summary["algos"]["pcm"]
    assert "update_speedup" in pcm and 0 < pcm["activation_memory_ratio"] <= 1
    assert pcm["activation_memory_ratio_whole_batch"] < 1  # one micro-batch: PCM saves memory
    # the output a person reads: every evaluation announced, the table, plain lines in a file
    text = proc.stdout
    assert text.count("evaluating ") == 3 and "held-out start -> end" in text
    assert "step    2/2" in text and "\r" not in text + proc.stderr
    assert "keep probs before the first batch: uniform [0.25 0.25 0.25 0.25]" in text
    # the adaptive budget: each step's kept fraction in the figures and the table
    assert len(pcm["kept_fraction_per_step"]) == 2
    assert all(f is None or 0 <= f <= 1 for f in pcm["kept_fraction_per_step"])
    assert summary["activation_memory"]["keep_fraction"] == pcm["kept_fraction"]
    assert "kept (per step)" in text and "budget auto (target efficiency" in text


@pytest.mark.slow
def test_demo_is_deterministic_per_step(tmp_path: Path) -> None:
    """Two demo runs give the same per-step training success and held-out figures (on reach,
    where the tiny policy succeeds part of the time, so the figures are not all zero)."""
    from trainer_client.train.demo import DemoConfig, run_demo

    def run(out: Path) -> dict:
        cfg = DemoConfig.quick(out)
        cfg.env, cfg.sft_episodes, cfg.sft_iters, cfg.sft_lr = TASK, 20, 200, 3e-3
        cfg.rl_steps, cfg.rl_overrides = 3, {"max_steps": MAX_STEPS}
        return run_demo(cfg)

    first, second = run(tmp_path / "a"), run(tmp_path / "b")
    for algo in ("grpo", "pcm"):
        a, b = first["algos"][algo], second["algos"][algo]
        assert a["success_rate"] == b["success_rate"] and len(a["success_rate"]) == 3
        assert (a["heldout_start"], a["heldout_end"]) == (b["heldout_start"], b["heldout_end"])
    assert any(r > 0 for r in first["algos"]["grpo"]["success_rate"])  # not trivially equal


def test_the_rl_config_is_composed_of_the_run_config_schema() -> None:
    """The selector run config's fields are the schema's: flags of their own, checked by the
    schema's checks; mode, seed and feature_dim are the trainer's (not flags)."""
    from dataclasses import fields

    from pcm_contract.run_config import RunConfigSchema
    from trainer_client.cli_options import build

    cfg = build(TrainConfig, {"algo": "random", "seed": 7, "eps": 0.2, "budget": 3})
    assert isinstance(cfg.selection, RunConfigSchema) and not hasattr(cfg, "keep_fraction")
    sent = cfg.run_config(feature_dim=32)
    assert set(sent) == {f.name for f in fields(RunConfigSchema)}
    assert (sent["mode"], sent["seed"], sent["eps"], sent["budget"], sent["feature_dim"]) == (
        "random",
        7,
        0.2,
        3,
        32,
    )
    assert build(TrainConfig, {"algo": "grpo"}).selection.keep_fraction == 1.0
    result = runner.invoke(app, ["rl", "--help"], env={"COLUMNS": "200"})
    for flag in ("--eps", "--eta", "--weighting", "--score", "--budget"):
        assert flag in result.output, flag
    assert "--feature-dim" not in result.output and "--mode" not in result.output


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rl", "--keep-fraction", "1.5"], "--keep-fraction 1.5: must be in (0, 1]"),
        (["rl", "--eps", "-0.5"], "--eps -0.5: must be 0 or in [1e-09, 1]"),
        (["rl", "--weighting", "mode"], "--weighting 'mode': must be one of"),
        (["rl", "--phases", "0"], "--phases 0: must be an integer in [1, 64]"),
        (["rl", "--budget", "-1"], "--budget -1: must be an integer in [0, 1000000]"),
    ],
)
def test_bad_run_config_flags_name_the_flag(argv: list[str], message: str) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_keep_schedule_is_checked_at_start_and_read_per_step(tmp_path: Path) -> None:
    from trainer_client.train.config import load_keep_schedule, scheduled_keep_fraction

    good = tmp_path / "keep.json"
    good.write_text(json.dumps([0.5] * 10 + [0.2, 0.4]))
    schedule = load_keep_schedule(str(good))
    assert scheduled_keep_fraction(schedule, 1) == 0.5
    assert scheduled_keep_fraction(schedule, 12) == 0.4
    # past the end: the mean of the last 10 entries
    assert scheduled_keep_fraction(schedule, 13) == pytest.approx((8 * 0.5 + 0.2 + 0.4) / 10)
    for bad in ("[]", "[0.5, 1.5]", '{"1": 0.5}', "not json"):
        path = tmp_path / "bad.json"
        path.write_text(bad)
        with pytest.raises(ValueError, match="--keep-schedule"):
            TrainConfig(keep_schedule=str(path))
    with pytest.raises(ValueError, match="--keep-schedule"):
        TrainConfig(keep_schedule=str(tmp_path / "missing.json"))


def test_auto_budget_needs_the_signal_score() -> None:
    with pytest.raises(ValueError, match="--budget-rule auto"):
        TrainConfig(selection=RunConfigSchema(budget_rule="auto", score="action"))
    TrainConfig(selection=RunConfigSchema(budget_rule="fixed", score="action", weighting="mean"))


def test_the_rate_objective_needs_the_adaptive_budget() -> None:
    from trainer_client.cli_options import build

    with pytest.raises(ValueError, match="--budget-rule auto"):
        build(TrainConfig, {"budget_rule": "fixed", "budget_objective": "rate"})
    cfg = build(TrainConfig, {"budget_objective": "rate"})  # with pcm-train's adaptive budget
    from selector_service.core.config import RunConfig

    assert RunConfig.from_dict(cfg.run_config(feature_dim=32)).budget_objective == "rate"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, "wiener"),  # pcm-train's default: the adaptive budget with Wiener phase weights
        ({"phase_weighting": "none"}, "none"),
        ({"budget_rule": "fixed"}, "none"),  # a fixed budget has no measured phases to weight
        ({"algo": "random"}, "none"),
        ({"algo": "grpo"}, "none"),
    ],
)
def test_the_wiener_phase_weights_go_with_the_adaptive_budget(
    values: dict[str, str], expected: str
) -> None:
    from trainer_client.cli_options import build

    cfg = build(TrainConfig, values)
    assert cfg.selection.phase_weighting == expected
    # what the selector gets passes its own checks (wiener needs budget_rule auto)
    from selector_service.core.config import RunConfig

    RunConfig.from_dict(cfg.run_config(feature_dim=32))
