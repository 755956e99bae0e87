"""The CUDA path: run only where torch sees a GPU (skipped elsewhere, with the reason).
`scripts/gpu-check.sh` runs this file on a GPU machine.

- RL on cuda in fp32 and bf16: every parameter, buffer and optimizer state tensor on the GPU
  after set-up and after each step;
- the selective backward on the GPU equals the CPU's (float64), and bf16 autocast there keeps
  log-probs and gradients in fp32 with the fp32 direction;
- `pcm-bench grad` on cuda reports the allocator's peak memory per side;
- SFT and evaluation on cuda;
- FSDP2 on NCCL (one rank: the CUDA code path of the sharded update, the replica refresh and
  the optimizer state) equals the unsharded update.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pcm_bench.grad import GradConfig, run_grad_bench
from tests.fixtures.training import tiny_rl_config, tiny_sft_config
from trainer_client.device import misplaced_tensors, resolve_device
from trainer_client.grpo import GRPOConfig, grpo_update, selective_backward
from trainer_client.policy import PolicyConfig, VLAPolicy
from trainer_client.train.distributed import (
    Dist,
    distributed_update,
    load_optimizer_state,
    optimizer_state,
    shard_policy,
    sync_replica,
)
from trainer_client.train.evaluate import evaluate_policy
from trainer_client.train.model import TrainPolicy, load_policy, param_vector
from trainer_client.train.rl import make_rl_optimizer, train_rl
from trainer_client.train.sft import run_sft
from trainer_client.types import OBS_STATE, Trajectory

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU (torch.cuda.is_available() is False); scripts/gpu-check.sh runs it",
)

TINY = PolicyConfig.preset("tiny", width=32, depth=2)


def _batch(policy: VLAPolicy, n: int = 6, c: int = 5) -> list[Trajectory]:
    rng = np.random.default_rng(0)
    trajs = []
    for i in range(n):
        obs = {OBS_STATE: rng.standard_normal((c, policy.config.state_dim)).astype(np.float32)}
        actions, logp = policy.act(obs, ["open the drawer"] * c)
        trajs.append(
            Trajectory(
                task_id="t",
                group_id=f"g{i // 3}",
                instruction="open the drawer",
                obs=obs,
                actions=actions,
                old_logp=(logp + rng.normal(0, 0.1, c)).astype(np.float32),
                phase_ids=np.zeros(c, np.int64),
                success=bool(i % 3 == 0),
                num_steps=8 * c,
            )
        )
    return trajs


def _grads(policy: torch.nn.Module) -> torch.Tensor:
    grads = [p.grad for p in policy.parameters()]
    assert all(g is not None for g in grads)
    return torch.cat([g.detach().reshape(-1).double().cpu() for g in grads if g is not None])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_rl_on_cuda_keeps_everything_on_the_gpu(
    precision: str, sft_checkpoint: Path, tmp_path: Path
) -> None:
    device = resolve_device("cuda")
    seen: list[int] = []

    def observer(step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        assert misplaced_tensors(module, optimizer, device) == [], step
        if step > 0:
            assert optimizer.state
        seen.append(step)

    cfg = tiny_rl_config(tmp_path, sft_checkpoint, steps=2, device="cuda", precision=precision)
    result = train_rl(cfg, log_line=lambda _l: None, observer=observer)
    assert seen == [0, 1, 2]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["runtime"]["device"].startswith("cuda")
    assert summary["runtime"]["precision"] == precision
    assert torch.cuda.get_device_name(device) == summary["runtime"]["device_name"]
    assert load_policy(result.final_policy).device.type == "cpu"  # checkpoints load anywhere


def test_auto_is_cuda_here() -> None:
    assert resolve_device("auto").type == "cuda"


def test_selective_backward_on_cuda_equals_the_cpu() -> None:
    torch.manual_seed(0)
    cpu = VLAPolicy(TINY).double()
    trajs = _batch(cpu)
    gpu = VLAPolicy(TINY).double()
    gpu.load_state_dict(cpu.state_dict())
    gpu.to("cuda")
    cfg = GRPOConfig(micro_batch="rows:4")
    a = selective_backward(cpu, trajs, config=cfg)
    b = selective_backward(gpu, trajs, config=cfg)
    assert a.kept_rows == b.kept_rows > 0
    assert b.loss == pytest.approx(a.loss, rel=1e-9)
    torch.testing.assert_close(_grads(gpu), _grads(cpu), rtol=1e-7, atol=1e-10)


def test_bf16_on_cuda_keeps_log_probs_in_fp32_and_the_gradient_direction() -> None:
    torch.manual_seed(0)
    policy = VLAPolicy(TINY).to("cuda")
    trajs = _batch(policy)
    grads = {}
    for precision in ("fp32", "bf16"):
        policy.set_precision(precision)
        policy.zero_grad()
        obs = {OBS_STATE: trajs[0].obs[OBS_STATE]}
        logp = policy.log_prob(obs, [trajs[0].instruction] * 5, trajs[0].actions)
        assert logp.dtype == torch.float32 and logp.device.type == "cuda"
        logp.sum().backward()
        grads[precision] = _grads(policy)
    assert torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16"], dim=0) > 0.99
    policy.zero_grad()
    stats = selective_backward(policy, trajs, config=GRPOConfig(micro_batch="rows:4"))
    assert np.isfinite(stats.loss) and stats.kept_rows > 0
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in policy.parameters())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_grad_bench_on_cuda_reports_allocator_peaks(precision: str) -> None:
    result = run_grad_bench(GradConfig(
        keep_fractions="0.2,0.5",
        trajectories=4,
        chunks=10,
        group_size=2,
        rows_micro_batch=4,
        repeats=1,
        policy_config=TINY,
        device="cuda",
        precision=precision,
    ))
    assert result["device"].startswith("cuda") and result["precision"] == precision
    grpo = result["grpo_results"]
    assert grpo["cuda_peak_bytes"] > grpo["cuda_peak_delta_bytes"] > 0
    for r in result["results"]:
        assert r["cuda_peak_bytes"] > 0 and 0 < r["cuda_peak_ratio"] <= 1.0
        assert r["cuda_peak_delta_ratio"] > 0
    json.dumps(result)


def test_sft_and_evaluation_on_cuda(tmp_path: Path) -> None:
    cfg = tiny_sft_config(tmp_path, iters=30, episodes=4, device="cuda", precision="bf16")
    result = run_sft(cfg, log=lambda _m: None)
    assert result.loss_end < result.loss_start
    policy = load_policy(result.checkpoint).to("cuda")
    r = evaluate_policy(policy, cfg.env, [50_000, 50_001], max_steps=16)
    assert r.episodes == 2


def test_fsdp_on_nccl_equals_the_unsharded_update(tmp_path: Path) -> None:
    """One rank (NCCL needs a GPU per rank; the 2-rank equivalence runs on gloo in CI): the
    sharded update, the replica refresh and the gathered optimizer state on CUDA."""
    device = torch.device("cuda", torch.cuda.current_device())
    torch.distributed.init_process_group(
        "cpu:gloo,cuda:nccl",
        init_method=f"file://{tmp_path / 'store'}",
        rank=0,
        world_size=1,
        device_id=device,
    )
    try:
        torch.manual_seed(0)
        policy = TrainPolicy(TINY).to(device)
        reference = TrainPolicy(TINY).to(device)
        reference.load_state_dict(policy.state_dict())
        trajs = _batch(policy)
        cfg = GRPOConfig(micro_batch="rows:4", max_grad_norm=None)
        sharded = shard_policy(policy, device, 1)
        optimizer = make_rl_optimizer(sharded, cfg)
        stats = distributed_update(
            sharded,
            optimizer,
            trajs,
            [np.ones(t.num_chunks, bool) for t in trajs],
            [np.ones(t.num_chunks) for t in trajs],
            config=cfg,
            dist=Dist(0, 1),
            global_informative_chunks=sum(t.num_chunks for t in trajs),
            global_informative_trajectories=len(trajs),
            global_kept_chunks=sum(t.num_chunks for t in trajs),
        )
        assert stats.kept_rows > 0
        assert misplaced_tensors(sharded, optimizer, device) == []
        sync_replica(sharded, policy)
        ref_opt = make_rl_optimizer(reference, cfg)
        grpo_update(reference, ref_opt, trajs, config=cfg)
        torch.testing.assert_close(param_vector(policy), param_vector(reference))
        state = optimizer_state(optimizer)
        fresh = make_rl_optimizer(sharded, cfg)
        load_optimizer_state(fresh, state)
        ref_state = ref_opt.state_dict()["state"]
        for i, entry in optimizer_state(fresh)["state"].items():
            torch.testing.assert_close(entry["exp_avg"], ref_state[i]["exp_avg"])
    finally:
        torch.distributed.destroy_process_group()
