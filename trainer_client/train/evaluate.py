"""Success rate of a policy over a list of initial states (one episode each).

`sampled` draws actions from the policy's Gaussian, as the RL rollouts do (what GRPO optimises);
`deterministic` executes the mean. Sampling is seeded, so an evaluation is reproducible.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer_client.rollout import RolloutCollector
from trainer_client.types import ChunkPolicy, Trajectory


@dataclass
class EvalResult:
    mode: str  # "sampled" | "deterministic"
    success_rate: float
    episodes: int
    mean_steps: float  # env steps per episode
    init_states: list[int]
    seconds: float
    # the episodes themselves, with keep_trajectories=True (not in as_dict)
    trajectories: list[Trajectory] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "success_rate": self.success_rate, "episodes": self.episodes,
                "mean_steps": self.mean_steps,
                # the range, not the list
                "init_states": [self.init_states[0], self.init_states[-1]],
                "seconds": self.seconds}


def evaluate_policy(
    policy: ChunkPolicy,
    env_spec: str,
    init_states: list[int],
    *,
    deterministic: bool = False,
    seed: int = 0,
    max_steps: int | None = None,
    num_workers: int = 0,
    collector: RolloutCollector | None = None,
    keep_trajectories: bool = False,
) -> EvalResult:
    """One episode per initial state. Pass `collector` to reuse its envs (and its max_steps);
    `keep_trajectories` returns the episodes in `EvalResult.trajectories`."""
    t0 = time.perf_counter()
    own = collector is None
    coll = collector or RolloutCollector(env_spec, num_workers=num_workers, max_steps=max_steps)
    try:
        trajs = coll.collect(
            policy,
            init_states,
            group_size=1,
            seed=None if deterministic else seed,
            step=0,
            deterministic=deterministic,
        )
    finally:
        if own:
            coll.close()
    success = np.array([t.success for t in trajs], dtype=np.float64)
    return EvalResult(
        mode="deterministic" if deterministic else "sampled",
        success_rate=float(success.mean()),
        episodes=len(trajs),
        mean_steps=float(np.mean([t.num_steps for t in trajs])),
        init_states=list(init_states),
        seconds=time.perf_counter() - t0,
        trajectories=list(trajs) if keep_trajectories else [],
    )
