"""The funnel and the action-mean shift of `pcm-bench replay --runs --heldout-episodes`, on
planted episodes and means."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pcm_bench.behaviour import chunk_items, chunk_means, funnel, mean_shift
from trainer_client.types import OBS_STATE, Trajectory


def _episode(env_phases: list[int] | None, success: bool) -> Trajectory:
    c = 3 if env_phases is None else len(env_phases)
    return Trajectory(
        task_id="t", group_id="g", instruction="", obs={OBS_STATE: np.arange(c, dtype=np.float32)
                                                       [:, None]},
        actions=np.zeros((c, 2, 2), np.float32), old_logp=np.zeros(c, np.float32),
        phase_ids=np.zeros(c, np.int64), success=success, num_steps=2 * c,
        env_phase_ids=None if env_phases is None else np.asarray(env_phases, np.int64))


def test_funnel_counts_how_far_each_episode_got() -> None:
    episodes = [
        _episode([0, 0, 0], False),  # never reached the object
        _episode([0, 1, 0], False),  # reached, no grasp
        _episode([0, 1, 2], False),  # grasped, dropped
        _episode([0, 1, 2, 2], True),  # grasped and placed
        _episode([0, 1, 1], True),  # succeeded without a grasp (pushed it there)
    ]
    f = funnel(episodes)
    assert f is not None
    assert f["episodes"] == 5 and f["success"] == pytest.approx(0.4)
    assert f["reached"] == pytest.approx(0.8) and f["grasped"] == pytest.approx(0.4)
    assert f["grasp_given_reach"] == pytest.approx(2 / 4)
    assert f["success_given_grasp"] == pytest.approx(1 / 2)
    assert f["success_without_grasp"] == pytest.approx(1 / 3)
    assert f["dropped_given_failed_grasp"] == 0.0  # the one failed grasp still held at the end
    dropped = funnel([_episode([0, 1, 2, 1], False), _episode([0, 2, 2], False)])
    assert dropped["dropped_given_failed_grasp"] == pytest.approx(0.5)  # type: ignore[index]
    # no grasp at all: the conditional rate is undefined, not 0
    assert funnel([_episode([0, 1], False)])["success_given_grasp"] is None  # type: ignore[index]
    # a task without env phases has no funnel
    assert funnel([_episode(None, True)]) is None and funnel([]) is None


def test_mean_shift_splits_arm_and_gripper_per_env_phase() -> None:
    # 4 chunks (K=2, A=3, gripper index 2), threshold 0.3; phases 0, 0, 2, 2 (none in 1)
    ref = np.zeros((4, 2, 3))
    ref[:, :, 2] = [[0.2, 0.4], [0.2, 0.4], [0.5, 0.5], [0.5, 0.5]]
    mu = ref.copy()
    mu[:2, :, 0] += 0.3  # phase 0: the arm moved by 0.3 on one of its two dims
    mu[2:, :, 2] -= 0.4  # phase 2: the gripper opens by 0.4 (0.5 -> 0.1 crosses 0.3)
    mu[0, 0, 2] += 0.2  # one phase-0 gripper entry 0.2 -> 0.4 crosses too
    s = mean_shift(mu, ref, np.array([0, 0, 2, 2]), gripper_index=2, threshold=0.3,
                   num_env_phases=3)
    assert s["chunks"] == [0.5, 0.0, 0.5]
    assert s["arm_rms"][0] == pytest.approx(np.sqrt(0.3 ** 2 / 2))
    assert s["arm_rms"][2] == pytest.approx(0.0)
    assert s["gripper_shift"][0] == pytest.approx(0.2 / 4)
    assert s["gripper_shift"][2] == pytest.approx(-0.4)
    assert s["gripper_rms"][2] == pytest.approx(0.4)
    assert s["flip"] == [pytest.approx(1 / 4), None, pytest.approx(1.0)]
    assert s["arm_rms"][1] is None and s["gripper_shift"][1] is None
    assert s["gripper_shift_all"] == pytest.approx((0.2 - 0.4 * 4) / 8)
    assert s["flip_all"] == pytest.approx(5 / 8)
    assert s["arm_rms_all"] == pytest.approx(np.sqrt(0.3 ** 2 * 4 / 16))
    with pytest.raises(ValueError, match="must be"):
        mean_shift(mu, ref[:3], np.array([0, 0, 2, 2]), gripper_index=2, threshold=0.3,
                   num_env_phases=3)


class _Planted(torch.nn.Module):
    """mean = the observation's state broadcast to (K, A)."""

    obs_keys = (OBS_STATE,)

    def forward(self, obs: dict, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.as_tensor(obs[OBS_STATE])[:, 0]  # (B,)
        return s[:, None, None].expand(-1, 2, 2), torch.zeros(2, 2)


def test_chunk_means_follow_the_items_in_order() -> None:
    a, b = _episode([0, 1, 2], True), _episode(None, False)
    items, phases = chunk_items([a, b])
    assert [c for _, c in items] == [0, 1, 2, 0, 1, 2]
    assert phases.tolist() == [0, 1, 2, -1, -1, -1]  # b has no env phases
    mu = chunk_means(_Planted(), items)
    assert mu.shape == (6, 2, 2) and mu[:, 0, 0].tolist() == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]
