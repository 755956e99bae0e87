"""--device, --precision and --parallel on the CPU: device resolution, the checks that say how to
fix a bad value, RL runs with `--device cpu` and `auto` whose parameters, buffers and optimizer
state all stay on the chosen device, bf16 autocast with fp32 log-probs, and the FSDP refusal
path. The CUDA side of the same is in test_cuda.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pcm_bench.grad import GradConfig, run_grad_bench
from tests.fixtures.training import tiny_rl_config
from trainer_client.cli import app
from trainer_client.cli_options import build
from trainer_client.device import (
    SetupError,
    autocast_dtype,
    misplaced_tensors,
    resolve_device,
)
from trainer_client.grpo import GRPOConfig, selective_backward
from trainer_client.memory import SavedTensorMeter
from trainer_client.policy import PolicyConfig, VLAPolicy
from trainer_client.train.config import EvalConfig, SFTConfig, TrainConfig
from trainer_client.train.metrics import read_metrics
from trainer_client.train.rl import train_rl
from trainer_client.types import OBS_STATE, Trajectory

runner = CliRunner()
TINY = PolicyConfig.preset("tiny")


def _fake_cuda(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """torch.cuda as seen on a machine with `count` GPUs (resolution only: nothing allocated)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


# ---- resolution and checks ----------------------------------------------------------------------


def test_cpu_and_auto_resolve_to_the_cpu_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cuda(monkeypatch, 0)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(SetupError, match="pass --device cpu"):
        resolve_device("cuda")
    with pytest.raises(SetupError, match=re.escape("auto | cpu | cuda | cuda:N")):
        resolve_device("gpu")


def test_auto_picks_cuda_and_torchrun_ranks_take_their_local_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_cuda(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(SetupError, match=r"cuda:0 \.\. cuda:1"):
        resolve_device("cuda:2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 1)
    with pytest.raises(SetupError, match="pass --device cuda"):
        resolve_device("cuda:0")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(SetupError, match="one rank per GPU"):
        resolve_device("cuda")


@pytest.mark.parametrize("cls", [TrainConfig, SFTConfig, EvalConfig])
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("device", "gpu0", "use auto | cpu | cuda | cuda:N"),
        ("precision", "fp16", "use one of fp32 | bf16"),
    ],
)
def test_configs_check_device_and_precision(
    cls: type, field: str, value: str, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build(cls, {field: value})


def test_parallel_is_checked_and_cuda_without_a_gpu_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValueError, match=re.escape("use one of ddp | fsdp")):
        build(TrainConfig, {"parallel": "zero"})
    _fake_cuda(monkeypatch, 0)
    result = runner.invoke(app, ["rl", "--device", "cuda"])
    assert result.exit_code == 2 and "sees no CUDA GPU" in result.output
    for argv in (["grad", "--device", "cuda"], ["grad", "--precision", "fp16"]):
        from pcm_bench.cli import app as bench_app

        result = runner.invoke(bench_app, argv)
        assert result.exit_code == 2 and "error: --" in result.output, result.output


def test_fsdp_that_cannot_run_is_refused_at_start_up_with_one_line(
    monkeypatch: pytest.MonkeyPatch, sft_checkpoint: Path, tmp_path: Path
) -> None:
    """Where FSDP2 cannot run (an older torch; gloo without sum-only reductions), `--parallel
    fsdp` stops before anything is built, with one line saying what to do."""
    import trainer_client.train.rl as rl

    line = "--parallel fsdp: (simulated) cannot run here; use --parallel ddp"
    monkeypatch.setattr(rl, "fsdp_problem", lambda _device: line)
    with pytest.raises(SetupError, match="simulated"):
        train_rl(tiny_rl_config(tmp_path / "a", sft_checkpoint, parallel="fsdp"))
    assert not (tmp_path / "a").exists()
    result = runner.invoke(
        app, ["rl", "--parallel", "fsdp", "--out", str(tmp_path / "b"), "--no-progress"]
    )
    assert result.exit_code == 2
    assert [ln for ln in result.output.splitlines() if ln.strip()] == [f"error: {line}"]


def test_every_training_and_bench_command_has_the_flags() -> None:
    from pcm_bench.cli import app as bench_app

    wanted = {
        (app, "rl"): ("--device", "--precision", "--parallel"),
        (app, "sft"): ("--device", "--precision"),
        (app, "eval"): ("--device", "--precision"),
        (app, "demo"): ("--device", "--precision"),
        (bench_app, "grad"): ("--device", "--precision"),
        (bench_app, "estimator"): ("--device",),
    }
    for (cli, command), flags in wanted.items():
        result = runner.invoke(cli, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        for flag in flags:
            assert flag in result.output, (command, flag)


# ---- RL on the chosen device --------------------------------------------------------------------


@pytest.mark.parametrize(("device", "precision"), [("cpu", "fp32"), ("auto", "bf16")])
def test_rl_keeps_the_policy_and_optimizer_state_on_the_device(
    device: str, precision: str, sft_checkpoint: Path, tmp_path: Path
) -> None:
    """Every parameter, buffer and optimizer state tensor is on the chosen device after set-up
    and after each step (`auto` is the CPU here; test_cuda.py runs the same on a GPU)."""
    expected = resolve_device(device)
    seen: list[int] = []

    def observer(step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        assert misplaced_tensors(module, optimizer, expected) == [], step
        if step > 0:
            assert optimizer.state, "no optimizer state to check after a step"
        seen.append(step)

    cfg = tiny_rl_config(tmp_path, sft_checkpoint, steps=1, device=device, precision=precision)
    lines: list[str] = []
    train_rl(cfg, log_line=lines.append, observer=observer)
    assert seen == [0, 1]
    assert any(f"| {expected} (" in line and precision in line for line in lines)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["runtime"]["device"] == str(expected)
    assert summary["runtime"]["precision"] == precision
    (row,) = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "step"]
    assert np.isfinite(row["loss"])


def test_misplaced_tensors_names_what_is_elsewhere() -> None:
    module = torch.nn.Linear(2, 2)
    module.register_buffer("stat", torch.zeros(2, device="meta"))
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    module(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    assert misplaced_tensors(module, optimizer, torch.device("cpu")) == ["buffer stat on meta"]
    wrong = misplaced_tensors(module, optimizer, torch.device("meta"))
    assert "param weight on cpu" in wrong and "optimizer weight.momentum_buffer on cpu" in wrong


# ---- precision ----------------------------------------------------------------------------------


def _batch(policy: VLAPolicy, n: int = 4, c: int = 6) -> list[Trajectory]:
    rng = np.random.default_rng(0)
    trajs = []
    for i in range(n):
        obs = {OBS_STATE: rng.standard_normal((c, TINY.state_dim)).astype(np.float32)}
        actions, logp = policy.act(obs, ["push the button"] * c)
        trajs.append(
            Trajectory(
                task_id="t",
                group_id=f"g{i // 2}",
                instruction="push the button",
                obs=obs,
                actions=actions,
                old_logp=logp,
                phase_ids=np.zeros(c, np.int64),
                success=bool(i % 2),
                num_steps=8 * c,
            )
        )
    return trajs


def test_bf16_autocast_keeps_log_probs_and_the_loss_in_fp32() -> None:
    """CPU autocast is the same code path as CUDA's: the trunk runs in bf16, the head's output
    and log pi come back in fp32, the rollout's log-probs match the update's (rho starts at 1),
    the bf16 gradient of log pi points where the fp32 one does, and the selective backward
    leaves fp32 gradients."""
    torch.manual_seed(0)
    policy = VLAPolicy(PolicyConfig.preset("tiny", width=32, depth=2))
    obs = {OBS_STATE: np.random.default_rng(1).standard_normal((5, 39)).astype(np.float32)}
    actions, _ = policy.act(obs, ["reach"] * 5)  # one set of actions for both precisions
    grads = {}
    for precision in ("fp32", "bf16"):
        policy.set_precision(precision)
        assert policy.autocast_dtype == (torch.bfloat16 if precision == "bf16" else None)
        sampled, old_logp = policy.act(obs, ["reach"] * 5)
        replay = policy.log_prob(obs, ["reach"] * 5, sampled)
        np.testing.assert_allclose(replay.detach().numpy(), old_logp, rtol=1e-5, atol=1e-4)
        policy.zero_grad()
        logp = policy.log_prob(obs, ["reach"] * 5, actions)
        assert logp.dtype == torch.float32 and old_logp.dtype == np.float32
        logp.sum().backward()
        grads[precision] = torch.cat(
            [p.grad.reshape(-1) for p in policy.parameters() if p.grad is not None]
        )
    cos = torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16"], dim=0)
    assert cos > 0.99
    policy.zero_grad()
    stats = selective_backward(policy, _batch(policy), config=GRPOConfig(micro_batch="rows:5"))
    assert stats.kept_rows == 24 and np.isfinite(stats.loss)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in policy.parameters())
    assert autocast_dtype("fp32", torch.device("cpu")) is None


def test_activation_meter_does_not_count_autocast_copies_of_the_weights() -> None:
    lin = torch.nn.Linear(64, 64)
    x = torch.randn(32, 64, requires_grad=True)
    with SavedTensorMeter(exclude=lin.parameters()) as meter:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = lin(x)  # saves x's bf16 copy (4 KiB) and the weight's (excluded)
        y = h.float().sum()
    assert meter.peak_bytes == 32 * 64 * 2
    y.backward()


def test_grad_bench_reports_device_and_precision() -> None:
    result = run_grad_bench(GradConfig(
        keep_fractions="0.5",
        trajectories=4,
        chunks=6,
        group_size=2,
        rows_micro_batch=4,
        repeats=1,
        policy_config=TINY,
        threads=1,
        device="cpu",
        precision="bf16",
    ))
    assert result["device"] == "cpu" and result["precision"] == "bf16"
    assert result["cuda_memory"] is None  # CPU: the saved-tensor count only
    for r in result["results"]:
        assert r["cuda_peak_bytes"] is None and r["cuda_peak_ratio"] is None
        assert 0 < r["activation_memory_ratio"] < 1
    json.dumps(result)
