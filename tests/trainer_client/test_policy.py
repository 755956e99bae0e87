"""The small VLA policy: shapes, log-probs, input kinds, config checks, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer_client.policy import (
    HashedWordTokenizer,
    PolicyConfig,
    VLAPolicy,
    gaussian_log_prob,
)
from trainer_client.types import OBS_IMAGES, OBS_STATE, ChunkPolicy

B = 5


def tiny(**overrides) -> PolicyConfig:
    return PolicyConfig.preset("tiny", **overrides)


def make_obs(cfg: PolicyConfig, batch: int = B, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs: dict[str, np.ndarray] = {}
    if cfg.state_dim:
        obs[OBS_STATE] = rng.standard_normal((batch, cfg.state_dim)).astype(np.float32)
    if cfg.num_cameras:
        shape = (batch, cfg.num_cameras, cfg.image_size, cfg.image_size, 3)
        obs[OBS_IMAGES] = rng.integers(0, 256, shape, dtype=np.uint8)
    return obs


INSTR = ["reach the goal", "pick up the red block and put it in the bowl"]


def instructions(batch: int = B) -> list[str]:
    return [INSTR[i % 2] for i in range(batch)]


IMAGE_CFG = {"num_cameras": 2, "image_size": 32, "patch_size": 8, "state_dim": 9, "action_dim": 7}


@pytest.mark.parametrize(
    "overrides",
    [{}, IMAGE_CFG, {**IMAGE_CFG, "state_dim": 0}, {"use_text": False}],
    ids=["state", "images+state", "images", "state-no-text"],
)
def test_act_shapes_and_log_prob_matches(overrides):
    torch.manual_seed(0)
    cfg = tiny(**overrides)
    policy = VLAPolicy(cfg)
    as_protocol: ChunkPolicy = policy  # what rollouts see
    assert (as_protocol.chunk_size, as_protocol.action_dim) == (cfg.chunk_size, cfg.action_dim)
    obs = make_obs(cfg)
    actions, logp = policy.act(obs, instructions())
    assert actions.shape == (B, cfg.chunk_size, cfg.action_dim)
    assert actions.dtype == np.float32 and logp.dtype == np.float32
    assert logp.shape == (B,) and np.all(np.isfinite(logp))

    recomputed = policy.log_prob(obs, instructions(), actions)
    assert recomputed.shape == (B,) and recomputed.requires_grad
    np.testing.assert_allclose(recomputed.detach().numpy(), logp, rtol=1e-5, atol=1e-4)


def test_deterministic_returns_mean_and_zero_logp():
    torch.manual_seed(0)
    cfg = tiny()
    policy = VLAPolicy(cfg)
    obs = make_obs(cfg)
    a1, lp1 = policy.act(obs, instructions(), deterministic=True)
    a2, _ = policy.act(obs, instructions(), deterministic=True)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(lp1, np.zeros(B, np.float32))
    mean, _ = policy(obs, instructions())
    np.testing.assert_allclose(a1, mean.detach().numpy(), atol=1e-6)
    sampled, _ = policy.act(obs, instructions())
    assert not np.allclose(sampled, a1)


def test_seeded_sampling_is_reproducible():
    policy = VLAPolicy(tiny())
    obs = make_obs(policy.config)
    policy.set_seed(3)
    a1, lp1 = policy.act(obs, instructions())
    policy.set_seed(3)
    a2, lp2 = policy.act(obs, instructions())
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(lp1, lp2)


def test_head_gradient_from_the_rollout_equals_autograd():
    """act_with_head_grad samples exactly what act samples, and its per-chunk gradient
    [dW | db] of log pi w.r.t. the action head equals autograd's, row by row."""
    torch.manual_seed(0)
    policy = VLAPolicy(tiny()).double()
    with torch.no_grad():
        policy.log_std.uniform_(-1.5, 0.5)  # per-entry sigma, so the 1/sigma factor is tested
    obs = make_obs(policy.config)
    policy.set_seed(3)
    a1, lp1 = policy.act(obs, instructions())
    policy.set_seed(3)
    a2, lp2, grad = policy.act_with_head_grad(obs, instructions())
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(lp1, lp2)
    a_dim, d = policy.config.action_dim, policy.config.width
    assert grad.shape == (B, a_dim * (d + 1)) and grad.dtype == np.float32
    for b in range(B):
        policy.zero_grad()
        obs_b = {k: v[b:b + 1] for k, v in obs.items()}
        policy.log_prob(obs_b, instructions()[b:b + 1], a2[b:b + 1]).sum().backward()
        head = policy.action_head
        expected = torch.cat([head.weight.grad, head.bias.grad[:, None]], dim=1).flatten()
        np.testing.assert_allclose(grad[b], expected.numpy(), rtol=1e-4, atol=1e-5)
    assert np.abs(grad).max() > 1e-3


def test_log_prob_is_the_chunk_gaussian_density():
    torch.manual_seed(0)
    policy = VLAPolicy(tiny()).double()
    obs = make_obs(policy.config)
    actions = np.random.default_rng(1).standard_normal((B, 8, 4))
    mean, log_std = policy(obs, instructions())
    expected = (
        torch.distributions.Normal(mean, log_std.exp())
        .log_prob(torch.as_tensor(actions))
        .sum(dim=(1, 2))
    )
    torch.testing.assert_close(policy.log_prob(obs, instructions(), actions), expected)
    torch.testing.assert_close(gaussian_log_prob(torch.as_tensor(actions), mean, log_std), expected)


def test_rows_are_independent_of_the_batch():
    """Padding of shorter instructions must not leak: a row alone equals the row in a batch."""
    torch.manual_seed(0)
    policy = VLAPolicy(tiny(**IMAGE_CFG)).double()
    obs = make_obs(policy.config)
    actions = np.random.default_rng(1).standard_normal((B, 8, 7))
    batched = policy.log_prob(obs, instructions(), actions)
    for b in range(B):
        single = policy.log_prob(
            {k: v[b : b + 1] for k, v in obs.items()}, instructions()[b : b + 1], actions[b : b + 1]
        )
        torch.testing.assert_close(single[0], batched[b], rtol=0, atol=1e-10)


def test_extra_obs_keys_are_ignored_and_missing_keys_explained():
    cfg = tiny()
    policy = VLAPolicy(cfg)
    obs = make_obs(tiny(**{**IMAGE_CFG, "state_dim": cfg.state_dim}))  # has images too
    actions, _ = policy.act(obs, instructions())
    assert actions.shape == (B, 8, 4)
    with pytest.raises(KeyError, match="state_dim"):
        policy.act({OBS_IMAGES: obs[OBS_IMAGES]}, instructions())


def test_bad_shapes_are_explained():
    policy = VLAPolicy(tiny(**IMAGE_CFG))
    obs = make_obs(policy.config)
    with pytest.raises(ValueError, match="num_cameras / image_size"):
        policy.act({**obs, OBS_IMAGES: obs[OBS_IMAGES][:, :1]}, instructions())
    with pytest.raises(ValueError, match="state_dim"):
        policy.act({**obs, OBS_STATE: obs[OBS_STATE][:, :3]}, instructions())
    with pytest.raises(ValueError, match="instructions"):
        policy.act(obs, instructions()[:2])
    with pytest.raises(ValueError, match="actions shape"):
        policy.log_prob(obs, instructions(), np.zeros((B, 8, 4)))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"width": 30, "heads": 4}, "divisible by heads"),
        ({"num_cameras": 1, "image_size": 100, "patch_size": 16}, "multiple of"),
        ({"state_dim": 0, "num_cameras": 0}, "no observation input"),
        ({"init_log_std": 5.0}, "init_log_std"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_config_checks_say_how_to_fix(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny(**overrides)
    with pytest.raises(ValueError, match="unknown policy preset"):
        PolicyConfig.preset("huge")


def test_tokenizer_is_stable_cached_and_padded():
    tok = HashedWordTokenizer(vocab_size=2048, max_tokens=4)
    first = tok.encode("Reach the goal!")
    assert tok.encode("Reach the goal!") is first  # cached
    assert list(first) == list(HashedWordTokenizer(2048, 4).encode("reach the goal !"))
    assert len(first) == 4 and np.all((first >= 1) & (first < 2048))
    assert len(tok.encode("one two three four five six")) == 4  # truncated
    ids, pad = tok(["a b", "a b c d", ""])
    assert ids.shape == (3, 4)
    assert pad.tolist() == [
        [False, False, True, True],
        [False, False, False, False],
        [True, True, True, True],
    ]


def test_bc_loss_trains_the_mean_not_the_log_std():
    torch.manual_seed(0)
    policy = VLAPolicy(tiny())
    obs = make_obs(policy.config)
    target = np.full((B, 8, 4), 0.5, dtype=np.float32)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = policy.bc_loss(obs, instructions(), target)
        loss.backward()
        assert policy.log_std.grad is None
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_save_and_load_round_trip(tmp_path):
    policy = VLAPolicy(tiny(**IMAGE_CFG))
    path = tmp_path / "policy.pt"
    policy.save(path, extra={"step": 3})
    loaded = VLAPolicy.load(path)
    assert loaded.config == policy.config
    obs = make_obs(policy.config)
    a, _ = policy.act(obs, instructions(), deterministic=True)
    b, _ = loaded.act(obs, instructions(), deterministic=True)
    np.testing.assert_array_equal(a, b)
