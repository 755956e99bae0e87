"""The chunked-rollout environment interface shared by MetaWorld and LIBERO.

A `ChunkEnv` runs one episode at a time. `reset(init_state)` puts it into a deterministic initial
state (the same index gives the same state, so a GRPO group of G rollouts can start from the same
state); `step_chunk(actions)` executes a whole chunk of K actions, stopping early when the task
succeeds or the step limit is reached, and returns what the rollout needs to record.

Actions are normalised to [-1, 1] in every dimension; the env clips them (the caller records the
unclipped actions the policy emitted). Observations are dicts with the keys of
`trainer_client.types` (`"state"`: float32 (S,), `"images"`: uint8 (V, H, W, 3)).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass
class ChunkStep:
    """The result of one `step_chunk` call."""

    obs: dict[str, np.ndarray]  # observation after the chunk (the next chunk's start)
    env_phase: int | None  # env-provided phase id at the next chunk's start (None: env has none)
    gripper: np.ndarray  # float32 (K,): clipped gripper command of each submitted action
    num_executed: int  # actions executed, < K when the episode ended inside the chunk
    reward: float  # sum of the env rewards of the executed actions
    success: bool  # the task has been solved in this episode
    done: bool  # success or step limit reached; `reset` before stepping again
    num_steps: int  # env steps executed since `reset`


class ChunkEnv(ABC):
    """One simulator instance behind the chunked-rollout interface.

    Subclasses set the attributes below in `__init__` and implement `_reset`, `_step` and
    `_observe` (and `env_phase` if the env has meaningful phases).
    """

    task_id: str  # canonical spec, e.g. "metaworld:reach-v3" or "libero:libero_object:0"
    instruction: str  # task language
    action_dim: int  # A
    max_steps: int  # step limit of an episode
    obs_keys: tuple[str, ...]  # the observation keys this env provides
    gripper_index: int  # action dim holding the gripper command
    gripper_threshold: float  # command > threshold means "close the gripper"
    num_init_states: int | None  # number of distinct initial states (None: unbounded)

    def __init__(self) -> None:
        self._num_steps = 0
        self._success = False
        self._done = True  # must reset first

    # ------------------------------------------------------------------ public API
    def reset(self, init_state: int) -> dict[str, np.ndarray]:
        """Start an episode from initial state `init_state` (deterministic per index).

        Returns the first observation (key -> array, shapes as in `trainer_client.types`).
        """
        init_state = int(init_state)
        if init_state < 0 or (
            self.num_init_states is not None and init_state >= self.num_init_states
        ):
            raise ValueError(
                f"init_state {init_state} out of range for {self.task_id} "
                f"(has {self.num_init_states if self.num_init_states is not None else 'any'}"
                " non-negative initial states)"
            )
        self._num_steps = 0
        self._success = False
        self._done = False
        self._reset(init_state)
        return self._observe()

    def step_chunk(self, actions: np.ndarray) -> ChunkStep:
        """Execute a chunk. actions: (K, A) in [-1, 1] (clipped here). Stops early on success
        or at the step limit; the `ChunkStep` reports how many actions ran."""
        if self._done:
            raise RuntimeError(f"{self.task_id}: episode is over; call reset() first")
        acts = np.asarray(actions, dtype=np.float64)
        if acts.ndim != 2 or acts.shape[1] != self.action_dim:
            raise ValueError(f"actions must have shape (K, {self.action_dim}), got {acts.shape}")
        if not np.all(np.isfinite(acts)):
            raise ValueError("actions contain NaN or inf")
        acts = np.clip(acts, -1.0, 1.0)
        executed = 0
        reward = 0.0
        for action in acts:
            step_reward, step_success = self._step(action)
            executed += 1
            self._num_steps += 1
            reward += float(step_reward)
            if step_success:
                self._success = True
            if self._success or self._num_steps >= self.max_steps:
                self._done = True
                break
        return ChunkStep(
            obs=self._observe(),
            env_phase=self.env_phase(),
            gripper=acts[:, self.gripper_index].astype(np.float32),
            num_executed=executed,
            reward=reward,
            success=self._success,
            done=self._done,
            num_steps=self._num_steps,
        )

    def env_phase(self) -> int | None:
        """The env's own phase id of the current state, or None when it has none."""
        return None

    @property
    def num_steps(self) -> int:
        return self._num_steps

    @property
    def success(self) -> bool:
        return self._success

    @property
    def done(self) -> bool:
        return self._done

    @abstractmethod
    def close(self) -> None:
        """Free simulator and renderer resources. Idempotent."""

    def __enter__(self) -> ChunkEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def _reset(self, init_state: int) -> None:
        """Put the simulator into initial state `init_state`."""

    @abstractmethod
    def _step(self, action: np.ndarray) -> tuple[float, bool]:
        """Execute one clipped action (A,); return (reward, success at this step)."""

    @abstractmethod
    def _observe(self) -> dict[str, np.ndarray]:
        """The current observation dict."""
