"""`pcm-train`: flags generated from the configs, errors that say how to fix, eval, sft, and a
tiny demo end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

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
    ):
        assert flag in result.output, flag


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rl", "--algo", "ppo"], "use one of pcm | grpo | random"),
        (["rl", "--selector", "tcp://x:1"], "grpc://HOST:PORT"),
        (["rl", "--env", "metaworld:nope-v3"], "unknown MetaWorld task"),
        (["rl", "--run-id", "bad id!"], "letters, digits"),
        (["rl", "--group-size", "1"], "GRPO compares within a group"),
        (["rl", "--micro-batch", "rows:x"], "rows:N"),
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


@pytest.mark.slow
def test_quick_demo_runs_the_whole_path(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer_client.cli",
            "demo",
            "--quick",
            "--out",
            str(tmp_path / "demo"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert elapsed < 90
    out = tmp_path / "demo"
    for path in ("sft/sft.pt", "rl/metrics.jsonl", "rl/training.png", "rl/final.pt", "demo.json"):
        assert (out / path).is_file(), path
    summary = json.loads((out / "demo.json").read_text())
    assert summary["rl"]["steps"] == 2
    assert set(summary["rl_eval"]) == {"sampled", "deterministic"}
    assert "held-out success" in proc.stdout and "step    2/2" in proc.stdout
