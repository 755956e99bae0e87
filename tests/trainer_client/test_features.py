"""The selector features per phase score (trainer_client/features.py)."""

from __future__ import annotations

import numpy as np
import pytest

from trainer_client.features import (
    chunk_features,
    feature_dim_for,
    signal_features,
    signal_projection,
)
from trainer_client.types import Trajectory


def traj(c: int, head_grad: bool = True) -> Trajectory:
    rng = np.random.default_rng(c)
    return Trajectory(task_id="t", group_id="g", instruction="x", obs={},
                      actions=rng.normal(size=(c, 8, 4)).astype(np.float32),
                      old_logp=np.zeros(c, np.float32), phase_ids=np.zeros(c, np.int64),
                      success=c % 2 == 0, num_steps=c,
                      head_grad=rng.normal(size=(c, 20)).astype(np.float32) if head_grad
                      else None)


def test_signal_features_are_the_advantage_weighted_projection() -> None:
    t = traj(5)
    x = signal_features(t.head_grad, -0.5, 16)
    r = signal_projection(20, 16)
    np.testing.assert_allclose(x, -0.5 * t.head_grad @ r, rtol=1e-6)
    assert x.dtype == np.float32 and x.shape == (5, 16)
    # one fixed projection for every trainer (a function of the shapes only)
    assert signal_projection(20, 16) is r
    np.testing.assert_array_equal(signal_projection.__wrapped__(20, 16), r)


def test_projection_keeps_inner_products_on_average() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=300), rng.normal(size=300)
    b = a + b
    r = signal_projection(300, 4096)
    assert (a @ r) @ (b @ r) == pytest.approx(a @ b, rel=0.1)


def test_chunk_features_per_score() -> None:
    trajs = [traj(3), traj(4)]
    adv = np.array([1.0, -1.0])
    action = chunk_features(trajs, adv, "action", 32)
    assert [f.shape for f in action] == [(3, 32), (4, 32)]
    np.testing.assert_array_equal(action[0], trajs[0].actions.reshape(3, -1))
    signal = chunk_features(trajs, adv, "signal", 16)
    np.testing.assert_allclose(signal[1], -signal_features(trajs[1].head_grad, 1.0, 16))
    with pytest.raises(ValueError, match="head_grads=True"):
        chunk_features([traj(3, head_grad=False)], adv[:1], "signal", 16)
    with pytest.raises(ValueError, match="unknown score"):
        chunk_features(trajs, adv, "sqrt", 16)
    assert feature_dim_for("action", 8, 4, 128) == 32 and feature_dim_for("signal", 8, 4, 64) == 64
