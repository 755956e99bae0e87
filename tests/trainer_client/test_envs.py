"""Environment factory and the MetaWorld chunk env on the real simulator."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from trainer_client.envs import ChunkEnv, make_env, parse_env_spec
from trainer_client.envs.metaworld_env import INSTRUCTIONS, MetaWorldChunkEnv
from trainer_client.expert import expert_policy
from trainer_client.types import OBS_IMAGES, OBS_STATE


def test_parse_valid_specs() -> None:
    mw = parse_env_spec("metaworld:reach-v3")
    assert (mw.family, mw.task, mw.task_index, mw.task_id) == (
        "metaworld",
        "reach-v3",
        None,
        "metaworld:reach-v3",
    )
    lib = parse_env_spec("libero:libero_object:3")
    assert (lib.family, lib.task, lib.task_index) == ("libero", "libero_object", 3)
    assert lib.task_id == "libero:libero_object:3"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", "non-empty"),
        ("reach-v3", "expected 'metaworld:TASK' or 'libero:SUITE:TASK_INDEX'"),
        ("gym:CartPole-v1", "expected 'metaworld:TASK' or 'libero:SUITE:TASK_INDEX'"),
        ("metaworld", "expected 'metaworld:TASK'"),
        ("metaworld:", "expected 'metaworld:TASK'"),
        ("metaworld:reach-v3:1", "expected 'metaworld:TASK'"),
        ("metaworld:reach-v9", "unknown MetaWorld task"),
        ("libero:libero_object", "expected 'libero:SUITE:TASK_INDEX'"),
        ("libero:libero_99:0", "unknown LIBERO suite"),
        ("libero:libero_object:x", "non-negative integer"),
        ("libero:libero_object:-1", "non-negative integer"),
    ],
)
def test_parse_errors(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_env_spec(spec)
    with pytest.raises(ValueError, match=match):
        make_env(spec)


def test_libero_task_index_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        make_env("libero:libero_object:10")


def test_every_metaworld_task_has_instruction_and_expert() -> None:
    from trainer_client.envs.metaworld_env import metaworld_task_names

    names = metaworld_task_names()
    assert set(names) == set(INSTRUCTIONS)
    for name in names:
        assert hasattr(expert_policy(name), "get_action")


@pytest.fixture
def reach() -> Iterator[ChunkEnv]:
    env = make_env("metaworld:reach-v3", max_steps=20)
    yield env
    env.close()


def test_metaworld_attributes(reach: ChunkEnv) -> None:
    assert isinstance(reach, MetaWorldChunkEnv)
    assert reach.task_id == "metaworld:reach-v3"
    assert reach.instruction == INSTRUCTIONS["reach-v3"]
    assert reach.action_dim == 4 and reach.max_steps == 20
    assert reach.obs_keys == (OBS_STATE,)
    assert reach.num_init_states is None


def test_metaworld_reset_deterministic_per_init_state(reach: ChunkEnv) -> None:
    a = reach.reset(3)[OBS_STATE]
    b = reach.reset(4)[OBS_STATE]
    c = reach.reset(3)[OBS_STATE]
    assert a.dtype == np.float32 and a.shape == (39,)
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, b)
    with make_env("metaworld:reach-v3") as other:  # another instance: the same state
        np.testing.assert_array_equal(other.reset(3)[OBS_STATE], a)
    with make_env("metaworld:reach-v3", seed=1) as reseeded:  # another base seed: different
        assert not np.array_equal(reseeded.reset(3)[OBS_STATE], a)


def test_metaworld_rollout_deterministic_given_actions(reach: ChunkEnv) -> None:
    acts = np.random.default_rng(0).uniform(-1, 1, size=(8, 4))
    reach.reset(1)
    first = reach.step_chunk(acts).obs[OBS_STATE]
    reach.reset(1)
    np.testing.assert_array_equal(reach.step_chunk(acts).obs[OBS_STATE], first)


def test_metaworld_chunk_stepping_and_limit(reach: ChunkEnv) -> None:
    obs0 = reach.reset(0)[OBS_STATE]
    acts = np.zeros((8, 4), dtype=np.float32)
    acts[:, 0] = 5.0  # clipped to 1 by the env
    acts[:, 3] = [-3, -1, 0, 0.5, 1, 2, 0, 0]
    out = reach.step_chunk(acts)
    assert out.num_executed == 8 and out.num_steps == 8 and not out.done
    assert not np.array_equal(out.obs[OBS_STATE], obs0)
    assert out.gripper.dtype == np.float32 and out.gripper.shape == (8,)
    np.testing.assert_allclose(out.gripper, [-1, -1, 0, 0.5, 1, 1, 0, 0])
    assert out.env_phase is None  # reach has no staged phases
    out = reach.step_chunk(np.zeros((8, 4)))
    assert (out.num_executed, out.num_steps, out.done) == (8, 16, False)
    out = reach.step_chunk(np.zeros((8, 4)))  # limit 20: only 4 run
    assert (out.num_executed, out.num_steps, out.done, out.success) == (4, 20, True, False)
    with pytest.raises(RuntimeError, match="reset"):
        reach.step_chunk(np.zeros((8, 4)))


def test_metaworld_bad_actions(reach: ChunkEnv) -> None:
    reach.reset(0)
    with pytest.raises(ValueError, match="shape"):
        reach.step_chunk(np.zeros((8, 7)))
    with pytest.raises(ValueError, match="shape"):
        reach.step_chunk(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        reach.step_chunk(np.full((2, 4), np.nan))
    with pytest.raises(ValueError, match="init_state"):
        reach.reset(-1)


def test_metaworld_success_stops_early() -> None:
    expert = expert_policy("reach-v3")
    with make_env("metaworld:reach-v3", max_steps=150) as env:
        assert isinstance(env, MetaWorldChunkEnv)
        env.reset(0)
        while not env.done:
            out = env.step_chunk(np.clip(expert.get_action(env.raw_obs), -1, 1)[None])
        assert out.success and env.success
        assert out.num_steps < 150
        # a chunk that succeeds part-way stops there
        env.reset(0)
        steps = out.num_steps
        for _ in range(steps - 1):
            env.step_chunk(np.clip(expert.get_action(env.raw_obs), -1, 1)[None])
        last = np.clip(expert.get_action(env.raw_obs), -1, 1)
        chunk = env.step_chunk(np.stack([last] * 8))
        assert chunk.success and chunk.done and chunk.num_executed == 1


def test_metaworld_env_phases_and_images() -> None:
    with make_env(
        "metaworld:pick-place-v3", render=True, cameras=("corner", "gripperPOV"), image_size=64
    ) as env:
        obs = env.reset(2)
        assert env.obs_keys == (OBS_STATE, OBS_IMAGES)
        assert obs[OBS_IMAGES].shape == (2, 64, 64, 3) and obs[OBS_IMAGES].dtype == np.uint8
        assert obs[OBS_IMAGES].std() > 0  # a real picture, not a blank buffer
        assert env.env_phase() == 0
        out = env.step_chunk(np.zeros((8, 4)))
        assert out.env_phase in (0, 1, 2)
        assert out.obs[OBS_IMAGES].shape == (2, 64, 64, 3)
    with pytest.raises(ValueError, match="unknown cameras"):
        make_env("metaworld:reach-v3", render=True, cameras=("nope",))
