"""Vectorised chunked rollouts: environments in worker processes, the policy batched here.

`RolloutCollector` owns a bank of env instances of one task (`trainer_client.env_banks`: in
this process when `num_workers=0`, else spread over spawned worker processes) and reuses them
across calls, so a training loop pays the env build cost once. Per chunk round it sends each
worker ONE message holding the actions of all its envs and gets back one message with their
`ChunkStep`s; the policy is queried once per round on the batch of all running episodes.
Episodes whose env finishes early free their slot for the next queued episode.

`collect_groups(...)` is the one-call form: G rollouts from each initial state, returned as
`Trajectory` objects with group ids, old log-probs from `policy.act`, phase labels and timing.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer_client.env_banks import EnvInfo, LocalBank, Op, ProcessBank, ResetOut
from trainer_client.envs import ChunkStep, parse_env_spec
from trainer_client.phases import Segmenter, make_segmenter
from trainer_client.types import ChunkPolicy, Trajectory
from trainer_client.vector_env import GymVectorBank


@dataclass
class RolloutStats:
    """Timing of one `collect` call (seconds, wall clock)."""

    rollout_s: float = 0.0  # the whole call
    policy_s: float = 0.0  # inside policy.act
    env_s: float = 0.0  # waiting for env resets and chunk steps
    num_steps: int = 0  # env steps executed
    num_chunks: int = 0  # policy queries per env (chunks) in total
    num_episodes: int = 0

    @property
    def steps_per_s(self) -> float:
        return self.num_steps / self.rollout_s if self.rollout_s > 0 else 0.0


@dataclass
class _Episode:
    """Per-episode buffers while it runs."""

    index: int
    init_state: int
    obs: list[dict[str, np.ndarray]] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    head_grad: list[np.ndarray] = field(default_factory=list)
    gripper: list[np.ndarray] = field(default_factory=list)
    env_phase: list[int | None] = field(default_factory=list)
    reward: float = 0.0
    success: bool = False
    num_steps: int = 0


class RolloutCollector:
    """Reusable env bank for one task; `collect` runs G rollouts per initial state.

    num_workers=0 keeps the envs in this process (tests, tiny runs); otherwise they live in
    `num_workers` spawned processes. num_envs caps the env instances (default: one per
    episode of the first call); episodes beyond it queue for a free env. env_backend
    "gymnasium" runs each env in a process of its own under gymnasium's `AsyncVectorEnv`
    (`trainer_client.vector_env`; num_workers is then unused). Use as a context manager or
    call `close()`.
    """

    def __init__(
        self,
        env_spec: str,
        *,
        num_workers: int = 0,
        num_envs: int | None = None,
        max_steps: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
        env_backend: str = "workers",
    ) -> None:
        self.env_spec = env_spec
        self.task_id = parse_env_spec(env_spec).task_id
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if num_envs is not None and num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        kwargs = dict(env_kwargs or {})
        if max_steps is not None:
            kwargs["max_steps"] = int(max_steps)
        self._num_envs = num_envs
        self._bank: LocalBank | ProcessBank | GymVectorBank
        if env_backend == "workers":
            self._bank = (ProcessBank(env_spec, kwargs, num_workers) if num_workers > 0
                          else LocalBank(env_spec, kwargs))
        elif env_backend == "gymnasium":
            self._bank = GymVectorBank(env_spec, kwargs)
        else:
            raise ValueError(f"env_backend must be 'workers' or 'gymnasium', got {env_backend!r}")
        self._slots = 0
        self._info: EnvInfo | None = None
        self._calls = 0
        self.last_stats = RolloutStats()

    @property
    def info(self) -> EnvInfo:
        """Task metadata (builds the first env if none exists yet)."""
        if self._info is None:
            self._info = self._bank.ensure(1)
            self._slots = max(self._slots, 1)
        return self._info

    def _ensure_slots(self, n: int) -> None:
        if n > self._slots or self._info is None:
            self._info = self._bank.ensure(n)
            self._slots = max(self._slots, n)

    def collect(
        self,
        policy: ChunkPolicy,
        init_states: list[int],
        *,
        group_size: int = 8,
        chunk_size: int | None = None,
        segmenter: str | Segmenter = "progress",
        num_phases: int = 4,
        seed: int | None = None,
        step: int | None = None,
        deterministic: bool = False,
        head_grads: bool = False,
    ) -> list[Trajectory]:
        """Roll out `group_size` episodes from each initial state.

        Returns len(init_states) * group_size trajectories ordered by initial state, each group
        sharing group_id "{task_id}/init{i}/step{step}" (step defaults to this collector's call
        count). seed, if given, seeds torch's and numpy's global RNGs first (the policy's
        sampling). segmenter: a name for `make_segmenter` (the gripper segmenter gets the env's
        gripper threshold) or a ready `Segmenter`. head_grads: also record each chunk's
        action-head gradient of log pi (`VLAPolicy.act_with_head_grad`; the `signal` phase
        score's input) in `Trajectory.head_grad`.
        """
        t_start = time.perf_counter()
        init_list = [int(i) for i in init_states]
        if not init_list:
            raise ValueError("init_states is empty")
        if len(set(init_list)) != len(init_list):
            raise ValueError(f"init_states must be distinct, got {init_list}")
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        k = int(policy.chunk_size)
        if chunk_size is not None and int(chunk_size) != k:
            raise ValueError(f"chunk_size {chunk_size} != policy.chunk_size {k}")
        if head_grads and (deterministic or not hasattr(policy, "act_with_head_grad")):
            raise ValueError("head_grads needs sampled actions from a policy with "
                             "act_with_head_grad (e.g. VLAPolicy)")
        if seed is not None:
            _seed_global_rngs(seed)
        step_tag = self._calls if step is None else int(step)
        self._calls += 1

        n_episodes = len(init_list) * group_size
        n_slots = min(self._num_envs or max(self._slots, n_episodes), n_episodes)
        stats = RolloutStats(num_episodes=n_episodes)
        t0 = time.perf_counter()
        self._ensure_slots(n_slots)
        info = self.info
        stats.env_s += time.perf_counter() - t0
        if int(policy.action_dim) != info.action_dim:
            raise ValueError(
                f"policy.action_dim {policy.action_dim} != env action dim {info.action_dim}"
            )
        limit = info.num_init_states
        bad = [i for i in init_list if i < 0 or (limit is not None and i >= limit)]
        if bad:
            raise ValueError(
                f"init_states {bad} out of range [0, {limit if limit is not None else 'inf'}) "
                f"for {info.task_id}"
            )
        seg = _resolve_segmenter(segmenter, num_phases, info)

        episodes = [
            _Episode(index=i, init_state=init)
            for i, init in enumerate(e for e in init_list for _ in range(group_size))
        ]
        queue = deque(episodes)
        running: dict[int, _Episode] = {}
        current: dict[int, ResetOut | ChunkStep] = {}
        finished: list[_Episode] = []

        def start(slots: list[int]) -> None:
            ops: list[Op] = []
            for slot in slots:
                if queue:
                    ep = queue.popleft()
                    running[slot] = ep
                    ops.append((slot, "reset", ep.init_state))
            if ops:
                t = time.perf_counter()
                for (slot, _, _), res in zip(ops, self._bank.run(ops), strict=True):
                    current[slot] = res
                stats.env_s += time.perf_counter() - t

        start(list(range(n_slots)))
        while running:
            slots = sorted(running)
            obs_batch = {
                key: np.stack([current[s].obs[key] for s in slots]) for key in info.obs_keys
            }
            t = time.perf_counter()
            instructions = [info.instruction] * len(slots)
            head_grad = None
            if head_grads:
                actions, logp, head_grad = policy.act_with_head_grad(  # type: ignore[attr-defined]
                    obs_batch, instructions
                )
            else:
                actions, logp = policy.act(obs_batch, instructions, deterministic=deterministic)
            stats.policy_s += time.perf_counter() - t
            actions = np.asarray(actions, dtype=np.float32)
            logp = np.asarray(logp, dtype=np.float32)
            if actions.shape != (len(slots), k, info.action_dim) or logp.shape != (len(slots),):
                raise ValueError(
                    f"policy.act returned actions {actions.shape} and logp {logp.shape}; "
                    f"expected ({len(slots)}, {k}, {info.action_dim}) and ({len(slots)},)"
                )
            ops = []
            for i, slot in enumerate(slots):
                ep = running[slot]
                ep.obs.append(current[slot].obs)
                ep.env_phase.append(current[slot].env_phase)
                ep.actions.append(actions[i])
                ep.logp.append(float(logp[i]))
                if head_grad is not None:
                    ep.head_grad.append(head_grad[i])
                ops.append((slot, "step", actions[i]))
            t = time.perf_counter()
            results = self._bank.run(ops)
            stats.env_s += time.perf_counter() - t
            stats.num_chunks += len(slots)
            freed = []
            for slot, res in zip(slots, results, strict=True):
                assert isinstance(res, ChunkStep)
                ep = running[slot]
                ep.gripper.append(res.gripper)
                ep.reward += res.reward
                current[slot] = res
                if res.done:
                    ep.success = res.success
                    ep.num_steps = res.num_steps
                    stats.num_steps += res.num_steps
                    finished.append(running.pop(slot))
                    freed.append(slot)
            start(freed)

        stats.rollout_s = time.perf_counter() - t_start
        self.last_stats = stats
        finished.sort(key=lambda e: e.index)
        return [_to_trajectory(ep, info, seg, k, step_tag, stats) for ep in finished]

    def close(self) -> None:
        """Shut the env bank (and worker processes) down. Idempotent."""
        self._bank.close()

    def __enter__(self) -> RolloutCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _seed_global_rngs(seed: int) -> None:
    np.random.seed(seed % 2**32)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)


def _resolve_segmenter(segmenter: str | Segmenter, num_phases: int, info: EnvInfo) -> Segmenter:
    if isinstance(segmenter, str):
        if segmenter in ("gripper", "paper"):
            return make_segmenter(segmenter, num_phases, threshold=info.gripper_threshold)
        return make_segmenter(segmenter, num_phases)
    if segmenter.num_phases != num_phases:
        raise ValueError(
            f"segmenter has {segmenter.num_phases} phases but num_phases is {num_phases}"
        )
    return segmenter


def _to_trajectory(
    ep: _Episode, info: EnvInfo, seg: Segmenter, k: int, step_tag: int, stats: RolloutStats
) -> Trajectory:
    c = len(ep.actions)
    obs = {key: np.stack([o[key] for o in ep.obs]) for key in info.obs_keys}
    gripper = np.stack(ep.gripper).astype(np.float32)
    env_phase = (
        None if any(p is None for p in ep.env_phase) else np.asarray(ep.env_phase, dtype=np.int64)
    )
    phase_ids = seg(
        num_chunks=c,
        chunk_size=k,
        max_steps=info.max_steps,
        gripper=gripper,
        env_phase_ids=env_phase,
    )
    return Trajectory(
        task_id=info.task_id,
        group_id=f"{info.task_id}/init{ep.init_state}/step{step_tag}",
        instruction=info.instruction,
        obs=obs,
        actions=np.stack(ep.actions).astype(np.float32),
        old_logp=np.asarray(ep.logp, dtype=np.float32),
        phase_ids=np.asarray(phase_ids, dtype=np.int64),
        success=bool(ep.success),
        num_steps=int(ep.num_steps),
        gripper=gripper,
        env_phase_ids=env_phase,
        head_grad=np.stack(ep.head_grad).astype(np.float32) if ep.head_grad else None,
        info={
            "init_state": float(ep.init_state),
            "return": float(ep.reward),
            "rollout_s": stats.rollout_s,
            "policy_s": stats.policy_s,
            "env_s": stats.env_s,
        },
    )


def collect_groups(
    policy: ChunkPolicy,
    env_spec: str,
    init_states: list[int],
    group_size: int = 8,
    chunk_size: int = 8,
    num_workers: int = 0,
    segmenter: str | Segmenter = "progress",
    num_phases: int = 4,
    max_steps: int | None = None,
    seed: int | None = None,
    *,
    step: int | None = None,
    deterministic: bool = False,
    head_grads: bool = False,
    num_envs: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    collector: RolloutCollector | None = None,
) -> list[Trajectory]:
    """G = group_size rollouts from each initial state of `env_spec` -> list[Trajectory].

    With `collector`, its envs (and workers) are reused and env_spec / max_steps / num_workers
    / num_envs / env_kwargs must match how it was built (env_spec is checked); otherwise a
    temporary collector is built and closed. chunk_size must equal policy.chunk_size.
    Timing of the call is in each trajectory's info (rollout_s, policy_s, env_s).
    """
    if collector is not None:
        if parse_env_spec(env_spec).task_id != collector.task_id:
            raise ValueError(f"collector is for {collector.task_id}, not {env_spec}")
        return collector.collect(
            policy,
            init_states,
            group_size=group_size,
            chunk_size=chunk_size,
            segmenter=segmenter,
            num_phases=num_phases,
            seed=seed,
            step=step,
            deterministic=deterministic,
            head_grads=head_grads,
        )
    with RolloutCollector(
        env_spec,
        num_workers=num_workers,
        num_envs=num_envs,
        max_steps=max_steps,
        env_kwargs=env_kwargs,
    ) as tmp:
        return tmp.collect(
            policy,
            init_states,
            group_size=group_size,
            chunk_size=chunk_size,
            segmenter=segmenter,
            num_phases=num_phases,
            seed=seed,
            step=step,
            deterministic=deterministic,
            head_grads=head_grads,
        )
