"""Supervised-fine-tuning data from MetaWorld's scripted expert policies.

The expert acts per step on the MetaWorld state; Gaussian noise (std `noise_std`, every action
dim) is added to each action before the env clips it, which lowers the expert's success rate
and spreads the visited states. Episodes are cut into chunks of K actions; each demo sample is
(observation at the chunk's start, the K actions executed from there, the instruction), the
same shapes the policy predicts at rollout time.

Expert success on pick-place-v3 with max_steps 120 (50 episodes each): noise 0: 100%,
0.3: 88%, 0.5: 68%, 0.6: 62%, 0.7: 44%, 1.0: 22% (push-v3: 100, 86, 46, 16, 14, 2%).

For SFT toward a partial success rate, train on `actions` (the executed, noisy ones): a
policy that fits them learns the noise as its action std, and sampling from it at rollout
time reproduces a noisy expert (a 2-layer MLP fitted for 10 s on 300 episodes at noise 0.5
succeeds 42% sampled, 94% with its mean). `expert_actions` (clean labels on the noisy
states) give a near-perfect policy instead.

Demo episodes use initial states `init_state_offset + e` (default offset 100000), so they do
not overlap the low-index initial states RL training and evaluation use.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer_client.envs.metaworld_env import MetaWorldChunkEnv

DEMO_TASK = "pick-place-v3"  # the main demo task
DEMO_MAX_STEPS = 120  # 15 chunks of K=8; the noise-free expert needs ~45-60 steps
DEMO_NOISE_STD = 0.5  # expert success ~68% at DEMO_MAX_STEPS
DEMO_INIT_STATE_OFFSET = 100_000

_POLICY_OVERRIDES = {"peg-insert-side-v3": "SawyerPegInsertionSideV3Policy"}


@dataclass
class ExpertDemos:
    """Chunked expert demonstrations. N chunks from E episodes; K actions of A dims."""

    task: str  # MetaWorld task name
    instruction: str
    obs: dict[str, np.ndarray]  # key -> (N, ...): observation at each chunk's start
    actions: np.ndarray  # float32 (N, K, A): executed (noisy, clipped) actions
    expert_actions: np.ndarray  # float32 (N, K, A): the noise-free expert actions, clipped
    valid: np.ndarray  # bool (N, K): action ran inside the episode (False: padding at the end)
    episode: np.ndarray  # int64 (N,): episode index of each chunk
    chunk_index: np.ndarray  # int64 (N,): position of the chunk in its episode
    episode_success: np.ndarray  # bool (E,)
    episode_steps: np.ndarray  # int64 (E,): env steps of each episode
    steps_per_s: float  # env + expert steps per second while collecting

    @property
    def success_rate(self) -> float:
        return float(self.episode_success.mean()) if self.episode_success.size else 0.0

    @property
    def instructions(self) -> list[str]:
        """(N,) the instruction of each chunk."""
        return [self.instruction] * int(self.actions.shape[0])

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def expert_policy(task: str) -> Any:
    """MetaWorld's scripted expert for a v3 task (an object with `get_action(obs)`)."""
    import metaworld.policies as policies

    name = _POLICY_OVERRIDES.get(task)
    if name is None:
        words = task.removesuffix("-v3").split("-")
        name = "Sawyer" + "".join(w.capitalize() for w in words) + "V3Policy"
    cls = getattr(policies, name, None)
    if cls is None:
        raise ValueError(f"no scripted expert for MetaWorld task {task!r} (looked for {name})")
    return cls()


def collect_expert_demos(
    task: str = DEMO_TASK,
    num_episodes: int = 100,
    noise_std: float = DEMO_NOISE_STD,
    chunk_size: int = 8,
    seed: int = 0,
    *,
    max_steps: int | None = DEMO_MAX_STEPS,
    init_state_offset: int = DEMO_INIT_STATE_OFFSET,
    only_success: bool = False,
    env_kwargs: dict[str, Any] | None = None,
) -> ExpertDemos:
    """Roll out the noisy expert for `num_episodes` episodes and cut them into chunks.

    task: a MetaWorld task name, with or without the "metaworld:" prefix. seed drives the
    action noise. With only_success, chunks of failed episodes are dropped (the episode
    arrays still cover all episodes). env_kwargs go to the env (e.g. render=True for images).
    """
    task = task.removeprefix("metaworld:")
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    expert = expert_policy(task)
    rng = np.random.default_rng(seed)
    env = MetaWorldChunkEnv(task, max_steps=max_steps, **(env_kwargs or {}))
    a_dim = env.action_dim

    obs_rows: list[dict[str, np.ndarray]] = []
    act_rows: list[np.ndarray] = []
    exp_rows: list[np.ndarray] = []
    valid_rows: list[np.ndarray] = []
    ep_rows: list[int] = []
    idx_rows: list[int] = []
    successes: list[bool] = []
    lengths: list[int] = []
    total_steps = 0
    t0 = time.perf_counter()
    try:
        for e in range(num_episodes):
            obs = env.reset(init_state_offset + e)
            rows_before = len(act_rows)
            c = 0
            while not env.done:
                chunk_obs = obs
                acts = np.zeros((chunk_size, a_dim), dtype=np.float32)
                clean = np.zeros((chunk_size, a_dim), dtype=np.float32)
                valid = np.zeros(chunk_size, dtype=bool)
                for j in range(chunk_size):
                    if env.done:
                        acts[j], clean[j] = clean[j - 1], clean[j - 1]
                        continue
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # "Constant(s) may be too high"
                        a = np.clip(expert.get_action(env.raw_obs), -1.0, 1.0)
                    noisy = np.clip(a + rng.normal(0.0, noise_std, a_dim), -1.0, 1.0)
                    clean[j], acts[j], valid[j] = a, noisy, True
                    obs = env.step_chunk(noisy[None]).obs
                obs_rows.append(chunk_obs)
                act_rows.append(acts)
                exp_rows.append(clean)
                valid_rows.append(valid)
                ep_rows.append(e)
                idx_rows.append(c)
                c += 1
            successes.append(env.success)
            lengths.append(env.num_steps)
            total_steps += env.num_steps
            if only_success and not env.success:
                for rows in (obs_rows, act_rows, exp_rows, valid_rows, ep_rows, idx_rows):
                    del rows[rows_before:]
    finally:
        env.close()
    elapsed = time.perf_counter() - t0

    keys = env.obs_keys
    n = len(act_rows)
    return ExpertDemos(
        task=task,
        instruction=env.instruction,
        obs={
            k: (np.stack([o[k] for o in obs_rows]) if n else np.zeros((0,), np.float32))
            for k in keys
        },
        actions=np.asarray(act_rows, dtype=np.float32).reshape(n, chunk_size, a_dim),
        expert_actions=np.asarray(exp_rows, dtype=np.float32).reshape(n, chunk_size, a_dim),
        valid=np.asarray(valid_rows, dtype=bool).reshape(n, chunk_size),
        episode=np.asarray(ep_rows, dtype=np.int64),
        chunk_index=np.asarray(idx_rows, dtype=np.int64),
        episode_success=np.asarray(successes, dtype=bool),
        episode_steps=np.asarray(lengths, dtype=np.int64),
        steps_per_s=total_steps / elapsed if elapsed > 0 else 0.0,
    )


def expert_success_vs_noise(
    task: str,
    noise_stds: list[float],
    num_episodes: int = 30,
    max_steps: int | None = DEMO_MAX_STEPS,
    seed: int = 0,
) -> dict[float, float]:
    """Expert success rate at each noise level (chunking does not change it)."""
    return {
        float(s): collect_expert_demos(
            task, num_episodes, s, chunk_size=8, seed=seed, max_steps=max_steps
        ).success_rate
        for s in noise_stds
    }
