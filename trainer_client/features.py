"""The selector's chunk features x_ic, one kind per phase score of the run.

- score `action` (the paper's): the chunk's flattened actions (C, K*A), so feature_dim = K*A.
- score `signal`: the chunk's advantage-weighted action-head gradient of log pi, A_i * g_ic with
  g_ic = d log pi(a_ic | o_ic) / d head (recorded at rollout time, `Trajectory.head_grad`),
  projected to feature_dim by a fixed Gaussian matrix R (in_dim, D) / sqrt(D). Projection keeps
  inner products in expectation (E <R'x, R'y> = <x, y>), which is all the selector's signal score
  uses (selector_service/core/signal.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from trainer_client.types import Trajectory

SIGNAL_DIM = 128  # default feature_dim of the `signal` score
_PROJECTION_SEED = 0x5C0E  # one fixed projection: every trainer of a run must use the same


@lru_cache(maxsize=8)
def signal_projection(in_dim: int, feature_dim: int) -> np.ndarray:
    """R (in_dim, feature_dim) float32 with N(0, 1 / feature_dim) entries, the same everywhere."""
    rng = np.random.default_rng([_PROJECTION_SEED, in_dim, feature_dim])
    r = rng.standard_normal((in_dim, feature_dim)) / np.sqrt(feature_dim)
    r = r.astype(np.float32)
    r.flags.writeable = False
    return r


def signal_features(head_grad: np.ndarray, advantage: float, feature_dim: int) -> np.ndarray:
    """(C, feature_dim) float32: A_i * g_ic @ R for one trajectory's head gradients (C, in)."""
    g = np.asarray(head_grad, dtype=np.float32)
    return (np.float32(advantage) * g) @ signal_projection(g.shape[1], feature_dim)


def chunk_features(
    trajectories: Sequence[Trajectory], advantages: np.ndarray, score: str, feature_dim: int
) -> list[np.ndarray]:
    """Per trajectory (C_i, feature_dim) float32 features for the run's phase score."""
    if score == "action":
        return [t.action_features() for t in trajectories]
    elif score == "signal":
        out = []
        for t, adv in zip(trajectories, advantages, strict=True):
            if t.head_grad is None:
                raise ValueError(
                    "score 'signal' needs the rollout's action-head gradients: collect with "
                    "head_grads=True (pcm-train does so when --score signal)"
                )
            out.append(signal_features(t.head_grad, float(adv), feature_dim))
        return out
    else:
        raise ValueError(f"unknown score {score!r}: use action or signal")


def feature_dim_for(score: str, chunk_size: int, action_dim: int, signal_dim: int) -> int:
    """The run's feature_dim: K*A for `action`, signal_dim for `signal`."""
    if score == "action":
        return chunk_size * action_dim
    elif score == "signal":
        return signal_dim
    else:
        raise ValueError(f"unknown score {score!r}: use action or signal")
