"""The env bank on gymnasium's vector API: one `gymnasium.vector.AsyncVectorEnv` sub-env (and
worker process) per env slot, each a `ChunkGymEnv`, a thin wrapper whose one step is one action
chunk. `RolloutCollector(..., env_backend="gymnasium")` uses it; the default backend
(`"workers"`) puts several env slots in each of a few worker processes instead. Which one is
faster, and what each costs in processes: `pcm-bench rollout` (docs/BENCHMARKS.md).

How the collector's ops map onto the vector API (autoreset off, `AutoresetMode.DISABLED`):

- a round of resets is one `reset(options={"reset_mask": ..., "init_states": ...})`: only the
  masked slots reset, each from its own initial state (`init_states[slot]`);
- a round of chunk steps is one `step({"chunk": (N, K, A), "run": (N,)})`: the slots with
  `run` 0 (no episode this round) do not touch their env and answer their last observation.

The observations come back batched through the vector env's shared memory; the rest of each
`ChunkStep` (gripper commands, reward, success, step count, env phase) in its `info`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, AutoresetMode

from trainer_client.env_banks import EnvInfo, Op, ResetOut
from trainer_client.envs import ChunkEnv, ChunkStep, make_env

_NO_PHASE = -1  # info["env_phase"] of an env without phases (a vector info must be numeric)


def _box_like(value: np.ndarray) -> spaces.Box:
    """A Box holding arrays like `value` (its shape and dtype, the dtype's whole range)."""
    if np.issubdtype(value.dtype, np.integer):
        info = np.iinfo(value.dtype)
        return spaces.Box(int(info.min), int(info.max), value.shape, value.dtype)
    return spaces.Box(-np.inf, np.inf, value.shape, value.dtype)


class ChunkGymEnv(gym.Env):
    """A `ChunkEnv` as a gymnasium env, slot `slot` of a vector env.

    reset(options={"init_states": (N,) ints}) starts an episode from `init_states[slot]`;
    step({"chunk": (K, A), "run": 0 or 1}) runs the chunk (`ChunkEnv.step_chunk`) when `run`
    is 1, else returns the last observation untouched. The observation space is read from a
    first reset from initial state 0.
    """

    metadata = {"render_modes": []}  # noqa: RUF012 - gymnasium declares it on Env

    def __init__(self, spec: str, env_kwargs: dict[str, Any], slot: int) -> None:
        self.chunk_env: ChunkEnv = make_env(spec, **env_kwargs)
        self.slot = slot
        self.env_info = EnvInfo.of(self.chunk_env)
        self._obs = self.chunk_env.reset(0)
        self.observation_space = spaces.Dict({k: _box_like(np.asarray(v))
                                              for k, v in self._obs.items()})
        # K is the policy's chunk size, not the env's: the vector API batches the chunks as
        # given and does not check their length against this nominal (1, A).
        self.action_space = spaces.Dict({
            "chunk": spaces.Box(-1.0, 1.0, (1, self.env_info.action_dim), np.float32),
            "run": spaces.Box(0, 1, (), np.int8),
        })

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict]:
        if options is None or "init_states" not in options:
            raise ValueError("ChunkGymEnv.reset needs options={'init_states': (N,) ints}")
        self._obs = self.chunk_env.reset(int(options["init_states"][self.slot]))
        phase = self.chunk_env.env_phase()
        return self._obs, {"env_phase": _NO_PHASE if phase is None else int(phase)}

    def step(self, action: dict[str, Any]) -> tuple[dict[str, np.ndarray], float, bool, bool,
                                                     dict]:
        if not int(action["run"]):
            return self._obs, 0.0, False, False, {}
        out = self.chunk_env.step_chunk(action["chunk"])
        self._obs = out.obs
        # the observation travels through shared memory; the rest of the step in the info
        return out.obs, out.reward, out.success, out.done and not out.success, {
            "chunk_step": dataclasses.replace(out, obs={})}

    def close(self) -> None:
        self.chunk_env.close()


class GymVectorBank:
    """Env slots as the sub-envs of one `AsyncVectorEnv` (one spawned process each); built
    again, larger, when more slots are asked for."""

    def __init__(self, spec: str, env_kwargs: dict[str, Any]) -> None:
        self._spec = spec
        self._kwargs = env_kwargs
        self._vec: AsyncVectorEnv | None = None
        self._info: EnvInfo | None = None

    @property
    def num_envs(self) -> int:
        return 0 if self._vec is None else int(self._vec.num_envs)

    def ensure(self, n: int) -> EnvInfo:
        n = max(n, 1)
        if self._vec is None or n > self._vec.num_envs:
            self.close()
            self._vec = AsyncVectorEnv(
                [functools.partial(ChunkGymEnv, self._spec, self._kwargs, slot)
                 for slot in range(n)],
                context="spawn", autoreset_mode=AutoresetMode.DISABLED)
            self._info = self._vec.get_attr("env_info")[0]
        assert self._info is not None
        return self._info

    def run(self, ops: list[Op]) -> list[ResetOut | ChunkStep]:
        vec = self._vec
        if vec is None:
            raise RuntimeError("GymVectorBank.run before ensure")
        kinds = {kind for _, kind, _ in ops}
        if len(kinds) > 1:  # the collector sends resets and steps in separate rounds
            resets = [op for op in ops if op[1] == "reset"]
            steps = [op for op in ops if op[1] != "reset"]
            done = dict(zip([op[0] for op in resets], self.run(resets), strict=True))
            done.update(zip([op[0] for op in steps], self.run(steps), strict=True))
            return [done[slot] for slot, _, _ in ops]
        if not ops:
            return []
        n = int(vec.num_envs)
        slots = [slot for slot, _, _ in ops]
        kind = ops[0][1]
        if kind == "reset":
            mask = np.zeros(n, dtype=np.bool_)
            init_states = np.zeros(n, dtype=np.int64)
            for slot, _, init_state in ops:
                mask[slot], init_states[slot] = True, int(init_state)
            obs, infos = vec.reset(options={"reset_mask": mask, "init_states": init_states})
            return [ResetOut({k: v[slot] for k, v in obs.items()},
                             _phase(infos["env_phase"][slot])) for slot in slots]
        elif kind == "step":
            first = np.asarray(ops[0][2], dtype=np.float32)
            chunks = np.zeros((n, *first.shape), dtype=np.float32)
            run = np.zeros(n, dtype=np.int8)
            for slot, _, actions in ops:
                chunks[slot], run[slot] = actions, 1
            obs, _, _, _, infos = vec.step({"chunk": chunks, "run": run})
            return [dataclasses.replace(infos["chunk_step"][slot],
                                        obs={k: v[slot] for k, v in obs.items()})
                    for slot in slots]
        else:
            raise ValueError(f"unknown env op {kind!r}")

    def close(self) -> None:
        if self._vec is not None:
            self._vec.close()
            self._vec = None


def _phase(value: Any) -> int | None:
    phase = int(value)
    return None if phase == _NO_PHASE else phase
