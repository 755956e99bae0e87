"""Data-parallel RL: the all-reduced update equals the single-process one, and under torchrun
the ranks end every step with identical parameters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.trainer_client.train.conftest import MAX_STEPS, TASK
from trainer_client.grpo import GRPOConfig, grpo_update
from trainer_client.policy import PolicyConfig
from trainer_client.train.distributed import Dist, distributed_update, shard
from trainer_client.train.metrics import read_metrics
from trainer_client.train.model import TrainPolicy, load_policy, param_digest, param_vector
from trainer_client.types import OBS_STATE, Trajectory

# groups: (size, chunks, outcomes); rank 0 gets groups 0, 2, rank 1 gets groups 1, 3
GROUPS = [
    (3, 5, (1, 0, 0)),
    (2, 7, (1, 0)),
    (3, 4, (1, 1, 1)),  # not informative
    (2, 3, (0, 1)),
]


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


def _worker(rank: int, store: str, aggregation: str, out: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2
    )
    torch.set_num_threads(1)
    policy = _policy()
    groups, masks, weights = _batch(policy)
    flat = [t for grp in groups for t in grp]
    index = {id(t): i for i, t in enumerate(flat)}
    mine = [t for g in shard(list(range(len(groups))), Dist(rank, 2)) for t in groups[g]]
    idx = [index[id(t)] for t in mine]
    informative = [g for g in range(len(groups)) if len(set(GROUPS[g][2])) > 1]
    cfg = GRPOConfig(aggregation=aggregation, max_grad_norm=None, micro_batch="rows:3")
    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    distributed_update(
        policy,
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
    )
    torch.save(param_vector(policy), f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("aggregation", ["chunk", "trajectory"])
def test_all_reduced_update_equals_the_single_process_update(
    aggregation: str, tmp_path: Path
) -> None:
    torch.multiprocessing.spawn(
        _worker, args=(str(tmp_path / "store"), aggregation, str(tmp_path)), nprocs=2
    )
    # the single-process update on the whole batch, same optimizer
    policy = _policy()
    groups, masks, weights = _batch(policy)
    flat = [t for grp in groups for t in grp]
    cfg = GRPOConfig(aggregation=aggregation, max_grad_norm=None, micro_batch="rows:3")
    grpo_update(
        policy, torch.optim.SGD(policy.parameters(), lr=1.0), flat, masks, weights, config=cfg
    )
    expected = param_vector(policy)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(r0, r1)
    assert not torch.equal(r0, param_vector(_policy()))
    torch.testing.assert_close(r0, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_torchrun_two_ranks_end_with_identical_parameters(
    sft_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
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
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    digests = [(out / f"params_rank{r}.sha256").read_text().strip() for r in (0, 1)]
    assert digests[0] == digests[1]
    assert digests[0] != param_digest(load_policy(sft_checkpoint))  # it trained
    assert param_digest(load_policy(out / "final.pt")) == digests[0]
    rows = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "step"]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["trajectories"] == 16 for r in rows)  # one selection covers both ranks
    assert any(r["informative_chunks"] and r["kept_chunks"] for r in rows)
    assert "2 rank(s)" in proc.stdout
