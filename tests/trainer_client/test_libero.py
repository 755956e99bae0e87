"""A real LIBERO rollout: one libero_object task, one group of 2 short episodes."""

from __future__ import annotations

import math
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

from trainer_client.phases import label_trajectory, make_segmenter
from trainer_client.rollout import RolloutCollector
from trainer_client.types import OBS_IMAGES, OBS_STATE

K = 8
MAX_STEPS = 3 * K  # 3 chunks


class RandomChunkPolicy:
    """A tiny stochastic `ChunkPolicy` over 7-D LIBERO actions (gripper kept open)."""

    chunk_size = K
    action_dim = 7

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.std = 0.3

    def act(
        self, obs: dict[str, np.ndarray], instructions: list[str], deterministic: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        b = len(instructions)
        assert obs[OBS_IMAGES].shape == (b, 2, 128, 128, 3)
        mean = np.zeros((b, K, 7), np.float32)
        mean[:, :, 6] = -1.0
        eps = self.rng.standard_normal(mean.shape).astype(np.float32)
        actions = mean + self.std * eps
        logp = (-0.5 * eps**2 - math.log(self.std) - 0.5 * math.log(2 * math.pi)).sum((1, 2))
        return actions, logp.astype(np.float32)


@pytest.mark.slow
def test_libero_object_group_rollout() -> None:
    spec = "libero:libero_object:0"
    with RolloutCollector(spec, num_envs=1, max_steps=MAX_STEPS) as collector:
        info = collector.info
        assert info.instruction == "pick up the alphabet soup and place it in the basket"
        assert info.action_dim == 7 and info.num_init_states == 50
        trajs = collector.collect(
            RandomChunkPolicy(), [0], group_size=2, segmenter="progress", num_phases=4
        )
    assert len(trajs) == 2
    assert {t.group_id for t in trajs} == {f"{spec}/init0/step0"}
    for t in trajs:
        assert t.task_id == spec and not t.success
        assert t.num_steps == MAX_STEPS and t.num_chunks == 3
        assert t.obs[OBS_IMAGES].shape == (3, 2, 128, 128, 3)
        assert t.obs[OBS_IMAGES].dtype == np.uint8 and t.obs[OBS_IMAGES].std() > 0
        assert t.obs[OBS_STATE].shape == (3, 8) and t.obs[OBS_STATE].dtype == np.float32
        assert t.actions.shape == (3, K, 7) and t.old_logp.shape == (3,)
        assert t.phase_ids.tolist() == [0, 1, 2]  # progress bins over 24 steps
        assert t.gripper is not None and t.gripper.shape == (3, K)
        assert label_trajectory(make_segmenter("gripper", 4), t, MAX_STEPS).tolist() == [0, 0, 0]
        assert t.env_phase_ids is None
    # the group starts from the same bundled initial state
    np.testing.assert_array_equal(trajs[0].obs[OBS_STATE][0], trajs[1].obs[OBS_STATE][0])
    np.testing.assert_array_equal(trajs[0].obs[OBS_IMAGES][0], trajs[1].obs[OBS_IMAGES][0])

    # ---------------------------------------------------------------------------------------
    # HOOK: selection + one masked update on `trajs`, with the camera images through the policy
    # (embedded selector -> masks/weights -> selective backward -> optimizer step).
    # ---------------------------------------------------------------------------------------
    import dataclasses

    import torch

    from trainer_client.clients import connect
    from trainer_client.grpo import GRPOConfig, grpo_update
    from trainer_client.policy import PolicyConfig
    from trainer_client.train.distributed import Dist
    from trainer_client.train.model import TrainPolicy, param_vector
    from trainer_client.train.selection import select_global

    torch.manual_seed(0)
    policy = TrainPolicy(
        PolicyConfig.preset(
            "tiny", action_dim=7, state_dim=8, num_cameras=2, image_size=128, patch_size=32
        )
    )
    # Real observations and actions; the outcome of one episode is set to success so that the
    # group is informative, and the old log-probs are those of this policy (as if it had acted).
    batch = []
    for i, t in enumerate(trajs):
        with torch.no_grad():
            old = policy.log_prob(t.obs, [t.instruction] * t.num_chunks, t.actions)
        batch.append(dataclasses.replace(t, success=i == 0, old_logp=old.numpy()))
    client = connect("embedded")
    client.put_run("libero-hook", feature_dim=K * 7, phases=4, keep_fraction=0.34)
    sel = select_global(
        Dist(),
        client,
        "libero-hook",
        batch,
        request_id="libero-hook/t/step0",
        trainer_id="t",
        step=0,
    )
    assert sel.informative_chunks == 6 and sel.kept_chunks == 2  # one of 3 chunks each
    assert all(m.shape == (3,) and int(m.sum()) == 1 for m in sel.masks)

    rows_seen: list[int] = []
    images_seen: list[int] = []
    policy.trunk.register_forward_hook(lambda m, i, o: rows_seen.append(i[0].shape[0]))
    policy.patch_embed.register_forward_hook(lambda m, i, o: images_seen.append(i[0].shape[0]))
    before = param_vector(policy)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    stats = grpo_update(
        policy,
        optimizer,
        batch,
        sel.masks,
        sel.weights,
        config=GRPOConfig(micro_batch="trajectory"),
    )
    assert stats.kept_rows == 2 and stats.total_rows == 6
    assert stats.grad_norm is not None and stats.grad_norm > 0
    assert rows_seen == [1, 1]  # only the kept chunks went through the trunk
    assert images_seen == [2, 2]  # ... with their 2 camera images each
    assert not torch.equal(param_vector(policy), before)
    assert policy.patch_embed.weight.grad is not None
    assert policy.patch_embed.weight.grad.abs().sum() > 0  # the image encoder was trained
