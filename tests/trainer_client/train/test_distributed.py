"""Data-parallel RL: the all-reduced (ddp) and the FSDP2-sharded (fsdp) updates equal the
single-process one, and under torchrun the ranks end every step with identical parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.training import MAX_STEPS, TASK
from trainer_client.grpo import GRPOConfig, grpo_update
from trainer_client.policy import PolicyConfig
from trainer_client.train.distributed import (
    Dist,
    distributed_update,
    fsdp_problem,
    load_optimizer_state,
    optimizer_state,
    shard,
    shard_policy,
    sync_replica,
)
from trainer_client.train.metrics import read_metrics
from trainer_client.train.model import TrainPolicy, load_policy, param_digest, param_vector
from trainer_client.train.rl import make_rl_optimizer
from trainer_client.types import OBS_STATE, Trajectory

# groups: (size, chunks, outcomes); round-robin: rank 0 gets groups 0, 2, rank 1 gets 1, 3 (the
# ranks then run different numbers of micro-batches); "idle": rank 1 gets only group 2, which
# is not informative, so it computes nothing of its own
GROUPS = [
    (3, 5, (1, 0, 0)),
    (2, 7, (1, 0)),
    (3, 4, (1, 1, 1)),  # not informative
    (2, 3, (0, 1)),
]
IDLE_LAYOUT = {0: [0, 1, 3], 1: [2]}


def _policy() -> TrainPolicy:
    torch.manual_seed(0)
    return TrainPolicy(PolicyConfig.preset("tiny", width=16, depth=2, heads=2)).double()


def _batch(policy: TrainPolicy) -> tuple[list[list[Trajectory]], list, list]:
    """Per group: its trajectories; plus per trajectory masks and HT-like weights."""
    rng = np.random.default_rng(0)
    groups, masks, weights = [], [], []
    for g, (size, c, outcomes) in enumerate(GROUPS):
        trajs = []
        for j in range(size):
            obs = {OBS_STATE: rng.standard_normal((c, 39)).astype(np.float32)}
            actions, logp = policy.act(obs, ["reach"] * c)
            trajs.append(
                Trajectory(
                    task_id="t",
                    group_id=f"g{g}",
                    instruction="reach",
                    obs=obs,
                    actions=actions,
                    old_logp=(logp + rng.normal(0, 0.1, c)).astype(np.float32),
                    phase_ids=np.zeros(c, np.int64),
                    success=bool(outcomes[j]),
                    num_steps=8 * c,
                )
            )
            m = rng.random(c) < 0.5
            m[0] = True
            masks.append(m)
            weights.append(np.where(m, rng.uniform(1.0, 3.0, c), 0.0))
        groups.append(trajs)
    return groups, masks, weights


def _worker(
    rank: int,
    store: str,
    aggregation: str,
    out: str,
    parallel: str = "ddp",
    layout: str = "round-robin",
    optim: str = "sgd",
    ppo_epochs: int = 1,
    kl_coef: float = 0.0,
) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2
    )
    torch.set_num_threads(1)
    policy = _policy()
    groups, masks, weights = _batch(policy)
    flat = [t for grp in groups for t in grp]
    index = {id(t): i for i, t in enumerate(flat)}
    if layout == "round-robin":
        my_groups = shard(list(range(len(groups))), Dist(rank, 2))
    else:
        my_groups = IDLE_LAYOUT[rank]
    mine = [t for g in my_groups for t in groups[g]]
    idx = [index[id(t)] for t in mine]
    informative = [g for g in range(len(groups)) if len(set(GROUPS[g][2])) > 1]
    cfg = _config(aggregation, ppo_epochs, kl_coef)
    # fsdp: the update runs on the shards; `policy` stays the full replica, refreshed after
    trained = shard_policy(policy, torch.device("cpu"), 2) if parallel == "fsdp" else policy
    optimizer = _optimizer(trained, optim)
    distributed_update(
        trained,
        optimizer,
        mine,
        [masks[i] for i in idx],
        [weights[i] for i in idx],
        config=cfg,
        dist=Dist(rank, 2),
        global_informative_chunks=sum(GROUPS[g][0] * GROUPS[g][1] for g in informative),
        global_informative_trajectories=sum(GROUPS[g][0] for g in informative),
        global_kept_chunks=sum(
            int(masks[i].sum()) for i, t in enumerate(flat) if int(t.group_id[1:]) in informative
        ),
        ref_policy=_policy() if kl_coef else None,
    )
    if trained is not policy:
        sync_replica(trained, policy)
    torch.save(param_vector(policy), f"{out}/rank{rank}.pt")
    if optim == "adamw":  # the full optimizer state (gathered from the shards), and reloaded
        state = optimizer_state(optimizer)
        fresh = _optimizer(trained, optim)
        load_optimizer_state(fresh, state)
        torch.save({"state": state, "reloaded": optimizer_state(fresh)}, f"{out}/opt{rank}.pt")
    # both ranks done, then out without tearing gloo down: a rank tearing down its group or its
    # interpreter while the other's gloo threads still run aborts now and then ("terminate
    # called without an active exception", SIGABRT), after a barrier too; the results are saved
    torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _config(aggregation: str, ppo_epochs: int = 1, kl_coef: float = 0.0) -> GRPOConfig:
    return GRPOConfig(
        aggregation=aggregation,
        max_grad_norm=None,
        micro_batch="rows:3",
        ppo_epochs=ppo_epochs,
        kl_coef=kl_coef,
    )


def _optimizer(module: torch.nn.Module, optim: str) -> torch.optim.Optimizer:
    if optim == "sgd":
        return torch.optim.SGD(module.parameters(), lr=1.0)
    elif optim == "adamw":
        return make_rl_optimizer(module, GRPOConfig(lr=1e-2), log_std_lr=1e-1)
    else:
        raise ValueError(optim)


def _single_process_update(
    aggregation: str, optim: str, ppo_epochs: int = 1, kl_coef: float = 0.0
) -> tuple[torch.Tensor, dict]:
    """The reference: the whole batch in one process, same optimizer. Returns the parameters
    and the optimizer state after the update."""
    policy = _policy()
    groups, masks, weights = _batch(policy)
    flat = [t for grp in groups for t in grp]
    cfg = _config(aggregation, ppo_epochs, kl_coef)
    optimizer = _optimizer(policy, optim)
    ref_policy = _policy() if kl_coef else None
    grpo_update(policy, optimizer, flat, masks, weights, config=cfg, ref_policy=ref_policy)
    return param_vector(policy), optimizer.state_dict()


@pytest.mark.parametrize(
    ("parallel", "aggregation", "layout"),
    [
        ("ddp", "chunk", "round-robin"),
        ("ddp", "trajectory", "round-robin"),
        ("fsdp", "chunk", "round-robin"),
        ("fsdp", "trajectory", "idle"),
    ],
)
def test_distributed_update_equals_the_single_process_update(
    parallel: str, aggregation: str, layout: str, tmp_path: Path
) -> None:
    """SGD at lr 1: the parameter change is the gradient itself. fsdp: the gradients are
    reduce-scattered over the shards, ranks with fewer micro-batches (or none: "idle") pad with
    zero-weight passes, and the replica is refreshed from the shards."""
    torch.multiprocessing.spawn(
        _worker,
        args=(str(tmp_path / "store"), aggregation, str(tmp_path), parallel, layout),
        nprocs=2,
    )
    expected, _ = _single_process_update(aggregation, "sgd")
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(r0, r1)
    assert not torch.equal(r0, param_vector(_policy()))
    torch.testing.assert_close(r0, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_distributed_update_runs_the_epochs_and_the_kl_term_of_grpo_update(
    parallel: str, tmp_path: Path
) -> None:
    """The data-parallel update is `grpo_update` itself: two PPO epochs with a KL term to a
    reference policy give the single-process result (AdamW: its steps are bounded).

    Except the attention key biases: a key bias adds the same q . b_k to every logit of a query,
    which softmax ignores, so its gradient is exactly zero in theory and only rounding noise
    (~1e-17) in practice, summed in another order across ranks; AdamW divides each coordinate
    by its own scale, so that noise moves those 2 x 16 entries by ~1e-7 after two epochs. Every
    other parameter must match to 1e-10."""
    torch.multiprocessing.spawn(
        _worker,
        args=(str(tmp_path / "store"), "chunk", str(tmp_path), parallel, "round-robin",
              "adamw", 2, 0.5),
        nprocs=2,
    )
    expected, _ = _single_process_update("chunk", "adamw", ppo_epochs=2, kl_coef=0.5)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(r0, r1)
    one_epoch, _ = _single_process_update("chunk", "adamw")
    assert not torch.allclose(expected, one_epoch)  # the second epoch stepped
    key_bias = _key_bias_entries(_policy())
    assert int(key_bias.sum()) == 32
    torch.testing.assert_close(r0[~key_bias], expected[~key_bias], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(r0[key_bias], expected[key_bias], rtol=0, atol=1e-5)


def _key_bias_entries(policy: torch.nn.Module) -> torch.Tensor:
    """Which entries of `param_vector(policy)` are attention key biases (the middle third of
    each `in_proj_bias`: query, key, value)."""
    flags = []
    for name, p in policy.named_parameters():
        flag = torch.zeros(p.numel(), dtype=torch.bool)
        if name.endswith("self_attn.in_proj_bias"):
            third = p.numel() // 3
            flag[third:2 * third] = True
        flags.append(flag)
    return torch.cat(flags)


def test_fsdp_runs_on_cpu_with_gloo_here() -> None:
    """FSDP2 needs summed reduce-scatters; gloo has them with the pinned torch (2.13), so
    --parallel fsdp runs in CI rather than being refused."""
    assert fsdp_problem(torch.device("cpu")) is None


def test_fsdp_optimizer_state_gathers_and_reloads_like_the_single_process_one(
    tmp_path: Path,
) -> None:
    """The RL optimizer (fused AdamW, two groups) over the shards: its state gathered from the
    shards (what checkpoints hold) equals the single-process optimizer's, and loading it into a
    fresh sharded optimizer shards it back unchanged (resume under fsdp)."""
    torch.multiprocessing.spawn(
        _worker,
        args=(str(tmp_path / "store"), "chunk", str(tmp_path), "fsdp", "round-robin", "adamw"),
        nprocs=2,
    )
    expected_params, expected = _single_process_update("chunk", "adamw")
    torch.testing.assert_close(torch.load(tmp_path / "rank0.pt"), expected_params)
    for rank in (0, 1):
        blob = torch.load(tmp_path / f"opt{rank}.pt", weights_only=False)
        for got in (blob["state"], blob["reloaded"]):
            assert got["param_groups"] == expected["param_groups"]
            assert sorted(got["state"]) == sorted(expected["state"])
            for i, ref in expected["state"].items():
                for key, value in ref.items():
                    torch.testing.assert_close(
                        got["state"][i][key], value, rtol=1e-10, atol=1e-12, check_device=False
                    )


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_two_ranks_end_with_identical_parameters(
    parallel: str, sft_checkpoint: Path, tmp_path: Path
) -> None:
    """`pcm-train rl` under torchrun, 2 ranks on the CPU (gloo), --parallel ddp and fsdp; fsdp
    then resumes from its checkpoint (the optimizer state sharded back) for one more step."""
    out = tmp_path / parallel
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "trainer_client.cli",
        "rl",
        "--env",
        TASK,
        "--init",
        str(sft_checkpoint),
        "--out",
        str(out),
        "--steps",
        "2",
        "--init-states",
        "4",
        "--group-size",
        "4",
        "--max-steps",
        str(MAX_STEPS),
        "--checkpoint-every",
        "1",
        "--num-workers",
        "0",
        "--threads",
        "1",
        "--no-progress",
        "--trainer-id",
        "ddp",
        "--lr",
        "1e-3",
        "--algo",
        "pcm",
        "--device",
        "cpu",
        "--parallel",
        parallel,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}

    def torchrun(args: list[str]) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=Path(__file__).resolve().parents[3],
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    proc = torchrun(argv)
    digests = [(out / f"params_rank{r}.sha256").read_text().strip() for r in (0, 1)]
    assert digests[0] == digests[1]
    assert digests[0] != param_digest(load_policy(sft_checkpoint))  # it trained
    assert param_digest(load_policy(out / "final.pt")) == digests[0]
    rows = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "step"]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["trajectories"] == 16 for r in rows)  # one selection covers both ranks
    assert any(r["informative_chunks"] and r["kept_chunks"] for r in rows)
    assert f"2 rank(s) ({parallel})" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runtime"]["parallel"] == parallel and summary["runtime"]["device"] == "cpu"

    if parallel == "fsdp":
        proc = torchrun([*argv, "--resume", "--steps", "3"])
        assert "resuming from" in proc.stdout
        again = [(out / f"params_rank{r}.sha256").read_text().strip() for r in (0, 1)]
        assert again[0] == again[1] != digests[0]
        rows = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "step"]
        assert [r["step"] for r in rows] == [1, 2, 3]
