"""Expert demonstrations from MetaWorld's scripted policies."""

from __future__ import annotations

import numpy as np
import pytest

from trainer_client.expert import DEMO_TASK, collect_expert_demos, expert_policy
from trainer_client.types import OBS_STATE


@pytest.mark.parametrize("task", ["reach-v3", DEMO_TASK])
def test_noise_free_expert_succeeds(task: str) -> None:
    demos = collect_expert_demos(task, num_episodes=3, noise_std=0.0, chunk_size=8, seed=0)
    assert demos.success_rate == 1.0
    assert demos.episode_success.shape == (3,) and demos.episode_steps.shape == (3,)
    n = len(demos)
    assert demos.obs[OBS_STATE].shape == (n, 39) and demos.obs[OBS_STATE].dtype == np.float32
    assert demos.actions.shape == (n, 8, 4) and demos.expert_actions.shape == (n, 8, 4)
    assert demos.valid.shape == (n, 8)
    assert np.all(np.abs(demos.actions) <= 1.0)
    # every executed step is one valid action; chunks are numbered within their episode
    assert int(demos.valid.sum()) == int(demos.episode_steps.sum())
    for e in range(3):
        idx = demos.chunk_index[demos.episode == e]
        assert idx.tolist() == list(range(idx.shape[0]))
        assert idx.shape[0] == int(np.ceil(demos.episode_steps[e] / 8))
    # no noise: executed == expert actions
    np.testing.assert_array_equal(demos.actions[demos.valid], demos.expert_actions[demos.valid])
    assert demos.instructions == [demos.instruction] * n
    assert demos.steps_per_s > 0


def test_noise_lowers_success_and_is_seeded() -> None:
    a = collect_expert_demos(DEMO_TASK, num_episodes=10, noise_std=1.0, seed=0)
    b = collect_expert_demos(DEMO_TASK, num_episodes=10, noise_std=1.0, seed=0)
    assert a.success_rate < 1.0
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.episode_success, b.episode_success)
    assert not np.array_equal(a.actions[a.valid], a.expert_actions[a.valid])
    kept = collect_expert_demos(DEMO_TASK, num_episodes=10, noise_std=1.0, seed=0,
                                only_success=True)  # fmt: skip
    assert set(kept.episode.tolist()) == set(np.flatnonzero(a.episode_success).tolist())
    np.testing.assert_array_equal(kept.episode_success, a.episode_success)


def test_expert_errors() -> None:
    with pytest.raises(ValueError, match="no scripted expert"):
        expert_policy("fly-v3")
    with pytest.raises(ValueError, match="noise_std"):
        collect_expert_demos("reach-v3", num_episodes=1, noise_std=-0.1)
    with pytest.raises(ValueError, match="num_episodes"):
        collect_expert_demos("reach-v3", num_episodes=0)
