"""Chunked rollout collection on the real MetaWorld simulator, in-process and in workers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer_client.expert import expert_policy
from trainer_client.rollout import RolloutCollector, collect_groups
from trainer_client.types import OBS_STATE, ChunkPolicy, Trajectory


class RandomChunkPolicy:
    """A tiny stochastic `ChunkPolicy`: Gaussian chunks around a state-dependent mean."""

    def __init__(self, chunk_size: int = 8, action_dim: int = 4, seed: int = 0) -> None:
        self.chunk_size = chunk_size
        self.action_dim = action_dim
        self.std = 0.5
        self.rng = np.random.default_rng(seed)
        self.batch_sizes: list[int] = []

    def _mean(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = obs[OBS_STATE][:, : self.action_dim]
        return np.repeat(0.3 * np.tanh(state)[:, None, :], self.chunk_size, axis=1)

    def log_prob(self, obs: dict[str, np.ndarray], actions: np.ndarray) -> np.ndarray:
        z = (actions - self._mean(obs)) / self.std
        per_dim = -0.5 * z**2 - math.log(self.std) - 0.5 * math.log(2 * math.pi)
        return per_dim.sum(axis=(1, 2)).astype(np.float32)

    def act(
        self, obs: dict[str, np.ndarray], instructions: list[str], deterministic: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        b = len(instructions)
        assert all(v.shape[0] == b for v in obs.values())
        self.batch_sizes.append(b)
        mean = self._mean(obs)
        if deterministic:
            return mean.astype(np.float32), np.zeros(b, np.float32)
        actions = (mean + self.std * self.rng.standard_normal(mean.shape)).astype(np.float32)
        return actions, self.log_prob(obs, actions)


class ExpertChunkPolicy:
    """Open-loop chunks of MetaWorld's scripted reach expert (its first action, repeated)."""

    chunk_size = 8
    action_dim = 4

    def __init__(self) -> None:
        self.expert = expert_policy("reach-v3")

    def act(
        self, obs: dict[str, np.ndarray], instructions: list[str], deterministic: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        first = np.stack([self.expert.get_action(s.astype(np.float64)) for s in obs[OBS_STATE]])
        chunk = np.repeat(np.clip(first, -1, 1)[:, None, :], self.chunk_size, axis=1)
        return chunk.astype(np.float32), np.zeros(len(instructions), np.float32)


def _check_batch(
    trajs: list[Trajectory],
    policy: RandomChunkPolicy,
    init_states: list[int],
    group_size: int,
    max_steps: int,
    step: int,
    num_phases: int = 4,
) -> None:
    assert len(trajs) == len(init_states) * group_size
    k, a = policy.chunk_size, policy.action_dim
    for g, init in enumerate(init_states):
        group = trajs[g * group_size : (g + 1) * group_size]
        ids = {t.group_id for t in group}
        assert ids == {f"metaworld:reach-v3/init{init}/step{step}"}
        first_obs = [t.obs[OBS_STATE][0] for t in group]
        for o in first_obs[1:]:  # the same initial state for the whole group
            np.testing.assert_array_equal(o, first_obs[0])
    assert len({t.group_id for t in trajs}) == len(init_states)
    starts = {tuple(t.obs[OBS_STATE][0]) for t in trajs}
    assert len(starts) == len(init_states)  # different initial states differ
    for t in trajs:
        c = t.num_chunks
        assert t.task_id == "metaworld:reach-v3"
        assert t.instruction == "reach the goal position"
        assert 1 <= t.num_steps <= max_steps
        assert c == math.ceil(t.num_steps / k)
        assert t.obs[OBS_STATE].shape == (c, 39) and t.obs[OBS_STATE].dtype == np.float32
        assert t.actions.shape == (c, k, a) and t.actions.dtype == np.float32
        assert t.old_logp.shape == (c,) and t.old_logp.dtype == np.float32
        # old log-probs are the policy's, for the obs recorded at each chunk's start
        np.testing.assert_allclose(t.old_logp, policy.log_prob(t.obs, t.actions), rtol=1e-5)
        assert t.phase_ids.shape == (c,) and t.phase_ids.dtype == np.int64
        assert t.phase_ids.min() >= 0 and t.phase_ids.max() < num_phases
        assert t.gripper is not None and t.gripper.shape == (c, k)
        np.testing.assert_allclose(t.gripper, np.clip(t.actions[:, :, 3], -1, 1))
        assert t.env_phase_ids is None
        assert t.action_features().shape == (c, k * a)
        assert t.info["init_state"] in init_states
        assert t.info["rollout_s"] > 0 and t.info["env_s"] > 0 and t.info["policy_s"] >= 0


def test_collect_in_process() -> None:
    policy = RandomChunkPolicy()
    trajs = collect_groups(
        policy, "metaworld:reach-v3", [0, 5], group_size=3, chunk_size=8, max_steps=40, step=7
    )
    _check_batch(trajs, policy, [0, 5], 3, 40, step=7)
    assert policy.batch_sizes[0] == 6  # all episodes batched into one policy query
    # progress phases: chunk starts 0, 8, ..., 32 over 40 steps
    full = [t for t in trajs if t.num_chunks == 5]
    assert full and all(t.phase_ids.tolist() == [0, 0, 1, 2, 3] for t in full)


def test_collect_two_workers_matches_in_process() -> None:
    spec, inits = "metaworld:reach-v3", [1, 2, 3]
    local = collect_groups(RandomChunkPolicy(seed=3), spec, inits, group_size=2, max_steps=24)
    policy = RandomChunkPolicy(seed=3)
    with RolloutCollector(spec, num_workers=2, max_steps=24) as collector:
        remote = collector.collect(policy, inits, group_size=2)
        stats = collector.last_stats
        procs = list(collector._bank._procs)  # type: ignore[union-attr]
        assert all(p.is_alive() for p in procs)
    assert not any(p.is_alive() for p in procs)  # workers shut down on exit
    _check_batch(remote, policy, inits, 2, 24, step=0)
    for a, b in zip(local, remote, strict=True):  # envs are deterministic across processes
        assert a.group_id == b.group_id
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.obs[OBS_STATE], b.obs[OBS_STATE])
        assert (a.success, a.num_steps) == (b.success, b.num_steps)
    assert stats.num_episodes == 6 and stats.num_steps == sum(t.num_steps for t in remote)
    assert stats.steps_per_s > 0


def test_collector_reuse_queue_and_env_phases() -> None:
    policy = RandomChunkPolicy(seed=1)
    with RolloutCollector("metaworld:pick-place-v3", num_envs=2, max_steps=32) as collector:
        first = collector.collect(policy, [0, 1, 2], group_size=2, segmenter="env", num_phases=3)
        second = collector.collect(policy, [0], group_size=2, segmenter="gripper")
        assert len(collector._bank._envs) == 2  # type: ignore[union-attr]
    assert len(first) == 6 and len(second) == 2
    assert {t.group_id for t in first} == {
        f"metaworld:pick-place-v3/init{i}/step0" for i in (0, 1, 2)
    }
    assert {t.group_id for t in second} == {"metaworld:pick-place-v3/init0/step1"}
    for t in first:
        assert t.env_phase_ids is not None and t.env_phase_ids.shape == (t.num_chunks,)
        np.testing.assert_array_equal(t.phase_ids, np.minimum(t.env_phase_ids, 2))
        assert t.env_phase_ids[0] == 0
    for t in second:
        assert t.phase_ids.shape == (t.num_chunks,) and t.phase_ids.max() < 4


def test_success_is_recorded_and_stops_early() -> None:
    trajs = collect_groups(
        ExpertChunkPolicy(), "metaworld:reach-v3", [0, 1], group_size=1, max_steps=150,
        deterministic=True,
    )  # fmt: skip
    for t in trajs:
        assert t.success and t.num_steps < 150
        assert np.all(t.old_logp == 0)


def test_collect_errors() -> None:
    spec = "metaworld:reach-v3"
    with pytest.raises(ValueError, match="distinct"):
        collect_groups(RandomChunkPolicy(), spec, [0, 0], max_steps=8)
    with pytest.raises(ValueError, match="empty"):
        collect_groups(RandomChunkPolicy(), spec, [], max_steps=8)
    with pytest.raises(ValueError, match="group_size"):
        collect_groups(RandomChunkPolicy(), spec, [0], group_size=0, max_steps=8)
    with pytest.raises(ValueError, match="chunk_size"):
        collect_groups(RandomChunkPolicy(chunk_size=4), spec, [0], chunk_size=8, max_steps=8)
    with pytest.raises(ValueError, match="action_dim"):
        collect_groups(RandomChunkPolicy(action_dim=7), spec, [0], max_steps=8)
    with pytest.raises(ValueError, match="init_state"):
        collect_groups(RandomChunkPolicy(), spec, [-1], max_steps=8)
    with pytest.raises(ValueError, match="unknown segmenter"):
        collect_groups(RandomChunkPolicy(), spec, [0], segmenter="time", max_steps=8)
    with pytest.raises(ValueError, match="provides none"):
        collect_groups(RandomChunkPolicy(), spec, [0], segmenter="env", max_steps=8)
    with pytest.raises(ValueError, match="bad env spec"):
        collect_groups(RandomChunkPolicy(), "metaworld:nope", [0])


class NaNPolicy(RandomChunkPolicy):
    def act(
        self, obs: dict[str, np.ndarray], instructions: list[str], deterministic: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        actions, logp = super().act(obs, instructions, deterministic)
        return np.full_like(actions, np.nan), logp


def test_worker_error_propagates_and_collector_recovers() -> None:
    policy: ChunkPolicy = NaNPolicy()
    with RolloutCollector("metaworld:reach-v3", num_workers=2, max_steps=8) as collector:
        with pytest.raises(RuntimeError, match="NaN"):
            collector.collect(policy, [0, 1], group_size=1)
        # every worker's reply was read: the next call works on the same workers
        trajs = collector.collect(RandomChunkPolicy(), [0, 1], group_size=1)
    assert [t.num_steps for t in trajs] == [8, 8]


def test_gymnasium_backend_matches_in_process() -> None:
    """gymnasium's AsyncVectorEnv backend gives the same trajectories as envs in this process:
    3 env slots for 6 episodes (queued episodes, slots idle while others finish), env phases,
    and a second call on the same vector env."""
    spec, inits = "metaworld:pick-place-v3", [0, 1, 2]
    with RolloutCollector(spec, num_envs=3, max_steps=32) as collector:
        local = collector.collect(RandomChunkPolicy(seed=5), inits, group_size=2,
                                  segmenter="env", num_phases=3)
        local_again = collector.collect(RandomChunkPolicy(seed=6), [4], group_size=2)
    with RolloutCollector(spec, num_envs=3, max_steps=32,
                          env_backend="gymnasium") as collector:
        vec = collector.collect(RandomChunkPolicy(seed=5), inits, group_size=2,
                                segmenter="env", num_phases=3)
        vec_again = collector.collect(RandomChunkPolicy(seed=6), [4], group_size=2)
        assert collector._bank.num_envs == 3  # type: ignore[union-attr]
    for a, b in zip(local + local_again, vec + vec_again, strict=True):
        assert a.group_id == b.group_id
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.obs[OBS_STATE], b.obs[OBS_STATE])
        np.testing.assert_array_equal(a.gripper, b.gripper)
        np.testing.assert_array_equal(a.phase_ids, b.phase_ids)
        assert (a.success, a.num_steps, a.info["return"]) == (b.success, b.num_steps,
                                                              b.info["return"])
    assert vec[0].env_phase_ids is not None


def test_gymnasium_backend_early_success_and_bad_backend() -> None:
    """Episodes that succeed early leave their slots idle while the others run on."""
    trajs = collect_groups(ExpertChunkPolicy(), "metaworld:reach-v3", [0, 1], group_size=1,
                           max_steps=150, deterministic=True)
    with RolloutCollector("metaworld:reach-v3", max_steps=150,
                          env_backend="gymnasium") as collector:
        vec = collector.collect(ExpertChunkPolicy(), [0, 1], group_size=1, deterministic=True)
    assert [(t.success, t.num_steps) for t in vec] == [(t.success, t.num_steps) for t in trajs]
    assert all(t.success and t.num_steps < 150 for t in vec)
    with pytest.raises(ValueError, match="env_backend"):
        RolloutCollector("metaworld:reach-v3", env_backend="threads")
