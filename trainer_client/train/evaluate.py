"""Success rate of a policy over a list of initial states (one episode each).

`sampled` draws actions from the policy's Gaussian, as the RL rollouts do (what GRPO optimises);
`deterministic` executes the mean. Sampling is seeded, so an evaluation is reproducible.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from trainer_client.rollout import RolloutCollector
from trainer_client.types import ChunkPolicy


@dataclass
class EvalResult:
    mode: str  # "sampled" | "deterministic"
    success_rate: float
    episodes: int
    mean_steps: float  # env steps per episode
    init_states: list[int]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["init_states"] = [self.init_states[0], self.init_states[-1]]  # the range, not the list
        return d


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
) -> EvalResult:
    """One episode per initial state. Pass `collector` to reuse its envs (and its max_steps)."""
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
    )
