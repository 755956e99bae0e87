"""Data shapes shared by the environments, the policy and the training loop.

A rollout is a sequence of chunks: at each policy query the policy sees one observation and
emits K actions, which the environment executes one by one. Everything the GRPO update needs is
recorded per chunk at rollout time (the observation the policy saw, the K actions it emitted, and
their log-probability under the rollout policy), so the update needs no extra forward pass over
the rollout.

Shapes use: C chunks in a trajectory, K actions per chunk, A action dims, S state dims,
V cameras, H x W images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# Observation keys. An environment provides the subset it has.
OBS_STATE = "state"  # float32 (S,): proprio / low-dim state
OBS_IMAGES = "images"  # uint8 (V, H, W, 3): camera images


@dataclass
class Trajectory:
    """One rollout, cut into chunks. Arrays are stacked over chunks (leading dim C)."""

    task_id: str  # e.g. "metaworld:reach-v3" or "libero:libero_object:0"
    group_id: str  # GRPO group: same task and initial state, e.g. "reach-v3/init3/step12"
    instruction: str  # task language
    obs: dict[str, np.ndarray]  # key -> (C, ...) the observation at each chunk's start
    actions: np.ndarray  # float32 (C, K, A): the actions the policy emitted (pre-clipping)
    old_logp: np.ndarray  # float32 (C,): log pi_old(actions_c | obs_c) summed over the chunk
    phase_ids: np.ndarray  # int64 (C,): phase label of each chunk, in [0, num_phases)
    success: bool  # binary task outcome
    num_steps: int  # env steps executed
    gripper: np.ndarray | None = None  # float32 (C, K): gripper command per action, if any
    env_phase_ids: np.ndarray | None = None  # int64 (C,): phases the env itself provides
    # float32 (C, A * (d + 1)): d log pi / d (action head) per chunk, recorded at rollout time
    # when asked for (the `signal` phase score's input; see VLAPolicy.act_with_head_grad)
    head_grad: np.ndarray | None = None
    info: dict[str, float] = field(default_factory=dict)

    @property
    def num_chunks(self) -> int:
        return int(self.actions.shape[0])

    def action_features(self) -> np.ndarray:
        """(C, K*A) float32: the chunk's flattened actions, the selector's feature x_ic."""
        return self.actions.reshape(self.actions.shape[0], -1).astype(np.float32, copy=False)


class ChunkPolicy(Protocol):
    """What the rollout workers need from a policy."""

    chunk_size: int  # K
    action_dim: int  # A

    def act(
        self,
        obs: dict[str, np.ndarray],
        instructions: list[str],
        deterministic: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Batched query. obs: key -> (B, ...). Returns actions (B, K, A) float32 and their
        log-probs (B,) float32 under the current policy (0 when deterministic)."""
        ...
