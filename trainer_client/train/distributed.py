"""Data-parallel RL under torchrun (CPU: gloo; the same code runs on NCCL with GPUs).

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
identically on every rank. Summing, not averaging, is what makes the result equal to the
single-process gradient of the global loss. Parameters start identical (broadcast from rank 0)
and stay identical; `check_in_sync` verifies that at every checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer_client.grpo import (
    GRPOConfig,
    UpdateStats,
    group_advantages,
    informative_trajectories,
    selective_backward,
)
from trainer_client.train.model import param_digest
from trainer_client.types import Trajectory


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


def init_distributed() -> Dist:
    """Join the torchrun job if there is one (WORLD_SIZE > 1): gloo on CPU, nccl on GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return Dist(rank=torch.distributed.get_rank(), world_size=torch.distributed.get_world_size())


def shutdown_distributed(dist: Dist) -> None:
    if dist.enabled and torch.distributed.is_initialized():
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
    dist: Dist,
    global_informative_chunks: int,
    global_informative_trajectories: int,
    global_kept_chunks: int | None = None,
) -> UpdateStats:
    """One actor update on this rank's trajectories whose summed gradient over ranks equals the
    single-process gradient of the global masked loss (see the module docstring)."""
    import time

    t0 = time.perf_counter()
    advantages = group_advantages(
        [t.success for t in trajectories], [t.group_id for t in trajectories], config.adv_eps
    )
    informative = informative_trajectories(advantages)
    # rescale: plan_kept_rows divides by the rank-local count; we want the global one
    if config.aggregation == "chunk" and config.loss_denominator == "kept":
        if global_kept_chunks is None:
            raise ValueError("loss_denominator 'kept' needs global_kept_chunks")
        local = sum(
            int(np.count_nonzero(m)) for m, inf in zip(masks, informative, strict=True) if inf
        )
        scale = local / global_kept_chunks if local else 1.0
    elif config.aggregation == "chunk":
        local = sum(t.num_chunks for t, inf in zip(trajectories, informative, strict=True) if inf)
        scale = local / global_informative_chunks if local else 1.0
    elif config.aggregation == "trajectory":
        local = int(informative.sum())
        scale = local / global_informative_trajectories if local else 1.0
    else:
        raise ValueError(f"unknown aggregation {config.aggregation!r}")
    scaled = [np.asarray(w, dtype=np.float64) * scale for w in weights]

    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    stats = selective_backward(
        policy,  # type: ignore[arg-type]
        trajectories,
        masks,
        scaled,
        config=config,
        advantages=advantages,
    )
    # global row count and loss; every rank takes the same branch below
    kept, loss, clipped, kl = dist.all_sum(
        [
            stats.kept_rows,
            stats.loss,
            stats.clip_frac * stats.kept_rows,
            stats.approx_kl * stats.kept_rows,
        ]
    )
    stats.loss = loss
    stats.clip_frac = clipped / max(kept, 1.0)
    stats.approx_kl = kl / max(kept, 1.0)
    stats.kept_rows = int(kept)
    if kept > 0:
        t_opt = time.perf_counter()
        dist.all_reduce_grads(params)
        if config.max_grad_norm is not None:
            grad_norm = nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        else:
            grad_norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        stats.grad_norm = float(grad_norm)
        optimizer.step()
        stats.optimizer_s = time.perf_counter() - t_opt
    stats.update_s = time.perf_counter() - t0
    return stats
