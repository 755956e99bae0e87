"""SFT: behaviour cloning on the noisy scripted expert lowers the BC loss and writes a policy
file that RL and eval load."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.training import tiny_sft_config
from trainer_client.train.model import TrainPolicy, load_policy
from trainer_client.train.sft import SFT_SUMMARY, SFTResult, lr_factor, run_sft
from trainer_client.types import OBS_STATE


def test_sft_reduces_bc_loss_and_saves_a_loadable_policy(sft_result: SFTResult) -> None:
    assert sft_result.loss_end < 0.8 * sft_result.loss_start
    assert 0.0 <= sft_result.demo_success_rate <= 1.0 and sft_result.demo_chunks > 0
    policy = load_policy(sft_result.checkpoint)
    assert isinstance(policy, TrainPolicy)
    # the state input is standardised with the demos' statistics (stored in the checkpoint)
    assert not torch.allclose(policy.state_mean, torch.zeros_like(policy.state_mean))
    assert bool((policy.state_std >= 1e-2).all())
    # BC fits the mean; the action std stays at the configured exploration noise
    assert torch.allclose(policy.log_std, torch.full_like(policy.log_std, -1.0))
    summary = json.loads((sft_result.checkpoint.parent / SFT_SUMMARY).read_text())
    assert summary["loss_end"] == pytest.approx(sft_result.loss_end)


def test_sft_evaluates_on_held_out_states_and_is_reproducible(tmp_path: Path) -> None:
    cfg = tiny_sft_config(tmp_path / "a", episodes=3, iters=5, eval_episodes=2, max_steps=16)
    a = run_sft(cfg, log=lambda _m: None)
    assert set(a.evals) == {"sampled", "deterministic"}
    assert all(r.episodes == 2 and r.init_states[0] >= 50_000 for r in a.evals.values())
    b = run_sft(
        tiny_sft_config(tmp_path / "b", episodes=3, iters=5, eval_episodes=0, max_steps=16),
        log=lambda _m: None,
    )
    assert a.loss_end == b.loss_end  # same seed: same demos, init and batches
    pa, pb = load_policy(a.checkpoint), load_policy(b.checkpoint)
    obs = {OBS_STATE: np.zeros((1, 39), np.float32)}
    np.testing.assert_array_equal(
        pa.act(obs, ["x"], deterministic=True)[0], pb.act(obs, ["x"], deterministic=True)[0]
    )


def test_lr_schedule_warms_up_then_decays() -> None:
    f = [lr_factor(i, 100) for i in range(100)]
    assert f[0] == pytest.approx(0.2) and f[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[4:]))
    assert f[-1] == pytest.approx(0.1, abs=1e-3)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"env": "libero:libero_object:0"}, "scripted experts"),
        ({"labels": "clean"}, "noisy | expert"),
        ({"iters": 0}, "--iters 0: must be >= 1"),
        ({"preset": "huge"}, "tiny"),
    ],
)
def test_sft_config_errors_say_how_to_fix(tmp_path: Path, overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_sft_config(tmp_path, **overrides)
