"""Data-parallel RL under torchrun (CPU: gloo; on GPUs NCCL for the CUDA tensors, gloo for the
CPU-side bookkeeping).

    torchrun --nproc_per_node 2 -m trainer_client.cli rl --env metaworld:pick-place-v3 ...

Each rank rolls out its share of the step's initial states (whole GRPO groups, so advantages are
rank-local and exact). The selection covers the GLOBAL batch with ONE request:

1. every rank sends its trajectories' selector inputs (task, group, outcome, phase ids, action
   features: a few KB, never observations) to rank 0 (`gather_object`);
2. rank 0 alone calls the selector, with the request id of (run, trainer, step), and reports the
   outcomes once;
3. rank 0 sends each rank the masks and weights of its own trajectories, plus the global counts
   (`scatter_object_list`).

Why not "every rank submits the same global request id"? Each rank would have to send the whole
global batch anyway (the selection is over all of it), so it would need the gather regardless;
the selector would get world-size copies of every request (the first commits, the others replay
the stored answer: correct, but N times the traffic and the load), and any rank whose view of the
batch differed would silently receive masks for another batch. One caller is simpler and cheaper.

The update: each rank backpropagates its own kept chunks with the loss coefficients of the
GLOBAL batch (the selector's weights are rescaled so that the denominator is the global count of
informative chunks, or informative trajectories under `--aggregation trajectory`), then the
gradients are summed with one all-reduce (flattened into a single buffer), clipped and stepped
identically on every rank: `grpo_update` itself (its ppo_epochs loop and KL term), with the sum
over ranks as its hook between the backward and the optimizer step (`sum_over_ranks`).
Summing, not averaging, is what makes the result equal to the single-process gradient of the
global loss. Parameters start identical (broadcast from rank 0) and stay identical;
`check_in_sync` verifies that at every checkpoint.

`--parallel fsdp` (FSDP2, `shard_policy`): each trunk block and the rest of the policy are
`fully_shard`ed over the ranks, so parameters, gradients and the optimizer state are split
(each rank holds 1/N of them between uses; a block's parameters are all-gathered for its forward
and backward). The gradient reduction is a reduce-scatter SUM (divide factor 1), so the same
global-count loss coefficients make the sharded gradients equal the single-process gradient.
Two FSDP-specific rules:

1. every rank must run the same number of forward/backward passes (each one all-gathers and
   reduce-scatters): ranks agree on the most micro-batches any rank has, and a rank with fewer
   pads with zero-weight backward passes of a dummy row (exact: they add zero gradients);
2. the rollout needs the full policy without collectives (ranks run different numbers of rollout
   queries), so each rank keeps an unsharded, gradient-free replica for rollouts, evaluation and
   checkpoints, refreshed from the shards after every optimizer step (`sync_replica`), as RL
   stacks keep the rollout engine's weights separate from the FSDP actor. Checkpoints hold the
   full optimizer state (gathered from the shards), in the same format as without FSDP.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from trainer_client.device import SetupError
from trainer_client.grpo import (
    GRPOConfig,
    LogProbPolicy,
    UpdateStats,
    group_advantages,
    grpo_update,
    informative_trajectories,
    plan_kept_rows,
    split_for,
)
from trainer_client.policy import PolicyConfig
from trainer_client.train.model import param_digest
from trainer_client.types import OBS_IMAGES, OBS_STATE, Trajectory


@dataclass
class Dist:
    """This process's place in the job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- collectives (no-ops in a single process) -----------------------------------------

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Rank 0 gets [obj of rank 0, obj of rank 1, ...]; the others get None."""
        if not self.enabled:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    def scatter_from_main(self, objs: list[Any] | None) -> Any:
        """Rank r gets objs[r] (objs is only read on rank 0)."""
        if not self.enabled:
            assert objs is not None
            return objs[0]
        box: list[Any] = [None]
        torch.distributed.scatter_object_list(box, objs if self.is_main else None, src=0)
        return box[0]

    def broadcast_from_main(self, obj: Any) -> Any:
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_max(self, value: int) -> int:
        """The largest `value` over the ranks."""
        if not self.enabled:
            return int(value)
        t = torch.tensor([int(value)], dtype=torch.int64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def all_sum(self, values: Sequence[float]) -> list[float]:
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def broadcast_parameters(self, module: nn.Module) -> None:
        """Make every rank's parameters and buffers rank 0's."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                torch.distributed.broadcast(t.data, src=0)

    def all_reduce_grads(self, params: Sequence[nn.Parameter]) -> None:
        """Sum the gradients over ranks, in one flattened buffer. A rank that computed nothing
        contributes zeros (its .grad is None)."""
        if not self.enabled:
            return
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
        )
        torch.distributed.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def check_in_sync(self, module: nn.Module) -> str:
        """The parameters' sha256, after checking that every rank has the same."""
        digest = param_digest(module)
        if self.enabled:
            digests: list[Any] = [None] * self.world_size
            torch.distributed.all_gather_object(digests, digest)
            if len(set(digests)) != 1:
                raise RuntimeError(f"ranks' parameters diverged: digests {digests}")
        return digest


def init_distributed(device: torch.device | None = None) -> Dist:
    """Join the torchrun job if there is one (WORLD_SIZE > 1). The backend follows the policy's
    device: gloo for a CPU policy; for a CUDA one NCCL for CUDA tensors and gloo for the CPU
    bookkeeping (object gathers, counts), one process group with both."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not torch.distributed.is_initialized():
        if device is None or device.type == "cpu":
            torch.distributed.init_process_group(backend="gloo")
        elif device.type == "cuda":
            torch.distributed.init_process_group(backend="cpu:gloo,cuda:nccl", device_id=device)
        else:
            raise ValueError(f"no distributed backend for device {device}: use cpu or cuda")
    return Dist(rank=torch.distributed.get_rank(), world_size=torch.distributed.get_world_size())


def shutdown_distributed(dist: Dist, finished: bool = True) -> None:
    """Tear the process group down; after a finished run, only once every rank got here (a rank
    that tore gloo down while another still sent aborted that one at exit: SIGABRT). After an
    error no barrier: the other ranks may be gone."""
    if dist.enabled and torch.distributed.is_initialized():
        if finished:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def shard(items: Sequence[int], dist: Dist) -> list[int]:
    """This rank's share of the step's initial states (round-robin)."""
    return list(items[dist.rank :: dist.world_size])


def distributed_update(
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    trajectories: Sequence[Trajectory],
    masks: Sequence[np.ndarray],
    weights: Sequence[np.ndarray],
    *,
    config: GRPOConfig,
    denominator: str = "kept",
    dist: Dist,
    global_informative_chunks: int,
    global_informative_trajectories: int,
    global_kept_chunks: int | None = None,
    ref_policy: LogProbPolicy | None = None,
) -> UpdateStats:
    """One actor update on this rank's trajectories whose summed gradient over ranks equals the
    single-process gradient of the global masked loss (see the module docstring). `policy` is
    the rank's full replica (ddp) or its FSDP2-sharded module (`shard_policy`). It is
    `grpo_update` (its ppo_epochs loop and KL term included) with the loss coefficients rescaled
    to the global counts and `sum_over_ranks` between each backward and optimizer step."""
    advantages = group_advantages(
        [t.success for t in trajectories], [t.group_id for t in trajectories], config.adv_eps
    )
    scale = _global_scale(
        config,
        denominator,
        trajectories,
        masks,
        informative_trajectories(advantages),
        global_informative_chunks,
        global_informative_trajectories,
        global_kept_chunks,
    )
    scaled = [np.asarray(w, dtype=np.float64) * scale for w in weights]
    passes = 0
    if is_sharded(policy):  # FSDP: every rank runs as many forward/backward passes as the busiest
        rows = plan_kept_rows(
            trajectories, advantages, masks, scaled, config.aggregation, denominator
        )
        passes = dist.all_max(len(split_for(rows, config)))  # agreed before any backward
    return grpo_update(
        policy,
        optimizer,
        trajectories,
        masks,
        scaled,
        config=config,
        denominator=denominator,
        advantages=advantages,
        ref_policy=ref_policy,
        after_backward=lambda stats: sum_over_ranks(stats, policy, dist, passes),
    )


def _global_scale(
    config: GRPOConfig,
    denominator: str,
    trajectories: Sequence[Trajectory],
    masks: Sequence[np.ndarray],
    informative: np.ndarray,
    global_informative_chunks: int,
    global_informative_trajectories: int,
    global_kept_chunks: int | None,
) -> float:
    """The factor that turns `plan_kept_rows`' rank-local loss denominator into the global one."""
    if config.aggregation == "chunk" and denominator == "kept":
        if global_kept_chunks is None:
            raise ValueError("denominator 'kept' needs global_kept_chunks")
        local = sum(
            int(np.count_nonzero(m)) for m, inf in zip(masks, informative, strict=True) if inf
        )
        return local / global_kept_chunks if local else 1.0
    if config.aggregation == "chunk":
        local = sum(t.num_chunks for t, inf in zip(trajectories, informative, strict=True) if inf)
        return local / global_informative_chunks if local else 1.0
    if config.aggregation == "trajectory":
        local = int(informative.sum())
        return local / global_informative_trajectories if local else 1.0
    raise ValueError(f"unknown aggregation {config.aggregation!r}")


def sum_over_ranks(stats: UpdateStats, policy: nn.Module, dist: Dist, passes: int) -> UpdateStats:
    """`grpo_update`'s hook after a backward: the gradients summed over the ranks (one
    all-reduce; under FSDP the backward has reduce-scattered them already, after this rank pads
    to `passes` forward/backward passes) and the statistics made global, so every rank takes
    the same branch and steps identically."""
    sharded = is_sharded(policy)
    if sharded:
        if stats.micro_batches > passes:
            raise RuntimeError(
                f"FSDP update: selective_backward ran {stats.micro_batches} micro-batches, "
                f"more than the {passes} the ranks agreed; their collectives no longer match"
            )
        for _ in range(passes - stats.micro_batches):
            _zero_backward(policy)
    kept, loss, clipped, approx_kl, kl_ref = dist.all_sum(
        [
            stats.kept_rows,
            stats.loss,
            stats.clip_frac * stats.kept_rows,
            stats.approx_kl * stats.kept_rows,
            stats.kl_ref * stats.kept_rows,
        ]
    )
    stats.loss = loss
    stats.clip_frac = clipped / max(kept, 1.0)
    stats.approx_kl = approx_kl / max(kept, 1.0)
    stats.kl_ref = kl_ref / max(kept, 1.0)
    stats.kept_rows = int(kept)
    if kept > 0 and not sharded:
        dist.all_reduce_grads([p for p in policy.parameters() if p.requires_grad])
    return stats


# ---- FSDP2 --------------------------------------------------------------------------------------


def fsdp_problem(device: torch.device) -> str | None:
    """Why FSDP2 cannot run here (one line), or None. It runs on CUDA (NCCL) and, with torch
    >= 2.8 (sum-only reductions), on the CPU with gloo (tested in CI with torch 2.13)."""
    try:
        from torch.distributed.fsdp import FSDPModule, fully_shard  # noqa: F401
    except ImportError:
        return (
            f"--parallel fsdp: torch {torch.__version__} has no FSDP2 "
            "(torch.distributed.fsdp.fully_shard); upgrade torch or use --parallel ddp"
        )
    if not hasattr(FSDPModule, "set_gradient_divide_factor"):
        return (
            f"--parallel fsdp: torch {torch.__version__}'s FSDP2 cannot sum gradients "
            "(no set_gradient_divide_factor); upgrade torch or use --parallel ddp"
        )
    if device.type == "cpu" and not hasattr(FSDPModule, "set_force_sum_reduction_for_comms"):
        return (
            f"--parallel fsdp: torch {torch.__version__}'s FSDP2 needs PREMUL_SUM for summed "
            "gradients, which gloo lacks; run on CUDA, upgrade torch, or use --parallel ddp"
        )
    return None


def is_sharded(module: nn.Module) -> bool:
    """True for a module `shard_policy` returned (FSDP2)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(module, FSDPModule)


def shard_policy(policy: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """A copy of `policy` sharded with FSDP2 over the `world_size` ranks of the default process
    group: one FSDP unit per trunk block (`policy.trunk.layers`) and one for the rest (encoders,
    action head, log-std). Gradients are reduce-scattered as a SUM (see the module docstring).
    `policy` itself is left whole (the rollout replica). Raises a SetupError naming the
    problem where FSDP2 cannot run (`fsdp_problem`)."""
    problem = fsdp_problem(device)
    if problem is not None:
        raise SetupError(problem)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    sharded = copy.deepcopy(policy)
    mesh = init_device_mesh(device.type, (world_size,))
    for block in sharded.trunk.layers:  # type: ignore[union-attr]
        fully_shard(block, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    for module in sharded.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            if hasattr(module, "set_force_sum_reduction_for_comms"):
                module.set_force_sum_reduction_for_comms(True)
    return sharded


def sync_replica(sharded: nn.Module, replica: nn.Module) -> None:
    """Copy the sharded module's parameters into the full replica (an all-gather per parameter,
    on every rank in the same order)."""
    with torch.no_grad():
        pairs = zip(sharded.named_parameters(), replica.named_parameters(), strict=True)
        for (name, p), (name_r, q) in pairs:
            if name != name_r:
                raise RuntimeError(f"sharded parameter {name} vs replica {name_r}")
            q.copy_(_full(p.detach()))


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()` with every sharded (DTensor) state gathered into a full tensor:
    the same format with and without FSDP. A collective under FSDP: call it on every rank."""
    sd = optimizer.state_dict()
    state = {i: {k: _full(v) for k, v in sd["state"][i].items()} for i in sorted(sd["state"])}
    return {"state": state, "param_groups": sd["param_groups"]}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
    """Load a full optimizer state (`optimizer_state`'s or a plain `state_dict()`); states of
    sharded parameters are sharded like them. A collective under FSDP: call it on every rank."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    dtensor = _dtensor_type()
    state: dict[int, dict[str, Any]] = {}
    for i in sorted(state_dict["state"]):
        p = params[i]
        entry = {}
        for key, value in state_dict["state"][i].items():
            full_state = isinstance(value, torch.Tensor) and value.shape == p.shape
            if dtensor is not None and isinstance(p, dtensor) and full_state:
                from torch.distributed.tensor import distribute_tensor

                # shard it like its parameter
                value = distribute_tensor(value.to(p.device), p.device_mesh, p.placements)
            entry[key] = value
        state[i] = entry
    optimizer.load_state_dict({"state": state, "param_groups": state_dict["param_groups"]})


def _dtensor_type() -> Any:
    """torch's DTensor class (what FSDP2 shards into); None where torch has none."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return None
    return DTensor


def _full(t: Any) -> Any:
    """A DTensor's full value (a collective); anything else as is."""
    dtensor = _dtensor_type()
    return t.full_tensor() if dtensor is not None and isinstance(t, dtensor) else t


def _zero_backward(policy: nn.Module) -> None:
    """A forward/backward pass through every parameter that adds exactly zero gradient: FSDP's
    all-gathers and reduce-scatters without a contribution (a rank with fewer micro-batches)."""
    cfg = cast(PolicyConfig, policy.config)
    obs: dict[str, np.ndarray] = {}
    if cfg.state_dim:
        obs[OBS_STATE] = np.zeros((1, cfg.state_dim), np.float32)
    if cfg.num_cameras:
        shape = (1, cfg.num_cameras, cfg.image_size, cfg.image_size, 3)
        obs[OBS_IMAGES] = np.zeros(shape, np.uint8)
    actions = np.zeros((1, cfg.chunk_size, cfg.action_dim), np.float32)
    logp = policy.log_prob(obs, ["pad"], actions)  # type: ignore[operator]
    (logp * 0.0).sum().backward()
