"""Checkpoints: what they hold, how many are kept, RNG round trips, policy files."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer_client.policy import PolicyConfig, VLAPolicy
from trainer_client.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    save_policy,
    set_rng_state,
)
from trainer_client.train.model import TrainPolicy, load_policy, param_digest
from trainer_client.types import OBS_STATE


def _policy(seed: int = 0) -> TrainPolicy:
    torch.manual_seed(seed)
    return TrainPolicy(PolicyConfig.preset("tiny", width=16, heads=2))


def test_rng_state_round_trips() -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_checkpoints_hold_the_training_state_and_keep_the_newest(tmp_path: Path) -> None:
    policy = _policy()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    policy.log_prob(
        {OBS_STATE: np.ones((2, 39), np.float32)}, ["a", "b"], np.zeros((2, 8, 4), np.float32)
    ).sum().backward()
    optimizer.step()
    for step in (5, 10, 15):
        save_checkpoint(
            tmp_path,
            step,
            policy,
            optimizer,
            wall_s=1.5 * step,
            config={"algo": "pcm", "token": None},
            keep=2,
        )
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10, 15]
    path = latest_checkpoint(tmp_path)
    assert path is not None and path.name == "step_000015.pt"
    ckpt = load_checkpoint(path)  # weights_only: plain tensors and containers
    assert ckpt["step"] == 15 and ckpt["wall_s"] == pytest.approx(22.5)
    assert ckpt["config"]["algo"] == "pcm"
    fresh = torch.optim.AdamW(_policy(1).parameters(), lr=1e-3)
    fresh.load_state_dict(ckpt["optimizer"])
    assert fresh.state_dict()["state"][0]["step"] == 1
    # a training checkpoint is also a policy file for load_policy
    assert param_digest(load_policy(path)) == param_digest(policy)
    assert not list(tmp_path.glob("checkpoints/.*tmp*"))  # atomic writes leave nothing behind


def test_policy_files_keep_the_state_normalisation(tmp_path: Path) -> None:
    policy = _policy()
    states = np.random.default_rng(0).normal(3.0, 2.0, size=(100, 39))
    policy.set_state_normalization(states)
    save_policy(tmp_path / "p.pt", policy)
    loaded = load_policy(tmp_path / "p.pt")
    assert torch.allclose(loaded.state_mean, policy.state_mean)
    obs = {OBS_STATE: states[:3].astype(np.float32)}
    np.testing.assert_array_equal(
        policy.act(obs, ["x"] * 3, deterministic=True)[0],
        loaded.act(obs, ["x"] * 3, deterministic=True)[0],
    )
    # normalisation changes what the network sees: (s - mean) / std
    raw = VLAPolicy(policy.config)
    raw.load_state_dict(
        {k: v for k, v in policy.state_dict().items() if k not in ("state_mean", "state_std")}
    )
    mean, std = policy.state_mean.numpy(), policy.state_std.numpy()
    scaled = {OBS_STATE: ((states[:3] - mean) / std).astype(np.float32)}
    np.testing.assert_allclose(
        raw.act(scaled, ["x"] * 3, deterministic=True)[0],
        policy.act(obs, ["x"] * 3, deterministic=True)[0],
        atol=1e-5,
    )


def test_plain_vla_policy_files_load_with_identity_normalisation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = VLAPolicy(PolicyConfig.preset("tiny", width=16, heads=2))
    plain.save(tmp_path / "plain.pt")
    loaded = load_policy(tmp_path / "plain.pt")
    assert torch.equal(loaded.state_std, torch.ones(39))
    obs = {OBS_STATE: np.ones((1, 39), np.float32)}
    np.testing.assert_array_equal(
        plain.act(obs, ["x"], deterministic=True)[0], loaded.act(obs, ["x"], deterministic=True)[0]
    )


def test_missing_policy_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pcm-train sft"):
        load_policy(tmp_path / "nope.pt")
