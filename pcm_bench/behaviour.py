"""What a policy does on episodes, beyond its success rate: how far each episode gets, and how
the policy's action means moved from a reference policy's, arm and gripper apart, by the
environment's own phase.

For `pcm-bench replay --runs --heldout-episodes N`: the log-probability scores (dJ, dL, move)
sum a chunk's K x A entries, so a shift of one threshold-like entry (the gripper command, whose
mean crossing the close threshold turns a grasp into a miss) barely registers in them, and
they are computed on the reference policy's states, not the states the moved policy visits.
This module measures both on the moved policy's own held-out episodes.

- `funnel`: over episodes, the share that reach the object (env phase >= 1 at some chunk), that
  grasp it (env phase 2), and that succeed, with the conditional rates between the stages;
  of the episodes that grasped and failed, the share that no longer held the object at their
  last chunk (dropped, against carried but not placed in time).
  Staged MetaWorld tasks report env phases 0 approach, 1 at the object, 2 grasped
  (trainer_client/envs/metaworld_env.py); other tasks have no funnel (None).
- `mean_shift`: per env phase, over the chunks whose start lies in it, and over all chunks
  (`*_all`, also for tasks without env phases), with mu the policy's action means (R, K, A)
  and mu_ref the reference's on the same observations:
    - chunks: the phase's share of the chunks;
    - arm_rms: RMS of mu - mu_ref over the non-gripper entries (action units);
    - gripper_shift: mean of mu - mu_ref on the gripper entry (signed; > 0 closes more);
    - gripper_rms: its RMS;
    - flip: the share of gripper entries whose mean lies on the other side of the close
      threshold than the reference's (the open/closed decision at the mean changed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from trainer_client.types import Trajectory

ROWS = 256  # chunks per forward pass
SHIFTS = ("arm_rms", "gripper_shift", "gripper_rms", "flip")


def funnel(trajs: Sequence[Trajectory]) -> dict[str, Any] | None:
    """Reach / grasp / success shares of the episodes (None without env phases)."""
    if not trajs or any(t.env_phase_ids is None for t in trajs):
        return None
    top = np.array([int(np.max(t.env_phase_ids)) if t.num_chunks else 0  # type: ignore[arg-type]
                    for t in trajs])
    last = np.array([int(t.env_phase_ids[-1]) if t.num_chunks else 0  # type: ignore[index]
                     for t in trajs])
    success = np.array([t.success for t in trajs], dtype=bool)
    reached, grasped = top >= 1, top >= 2

    def share(num: np.ndarray, den: np.ndarray) -> float | None:
        return float(num[den].mean()) if den.any() else None

    return {"episodes": len(trajs), "success": float(success.mean()),
            "reached": float(reached.mean()), "grasped": float(grasped.mean()),
            "grasp_given_reach": share(grasped, reached),
            "success_given_grasp": share(success, grasped),
            "success_without_grasp": share(success, ~grasped),
            "dropped_given_failed_grasp": share(last < 2, grasped & ~success)}


def chunk_means(policy: Any, items: Sequence[tuple[Trajectory, int]]) -> np.ndarray:
    """(R, K, A) the policy's action means at each (trajectory, chunk)'s observation."""
    out = []
    keys = policy.obs_keys
    with torch.no_grad():
        for s in range(0, len(items), ROWS):
            part = items[s:s + ROWS]
            obs = {k: np.stack([t.obs[k][c] for t, c in part]) for k in keys}
            mean, _ = policy(obs, [t.instruction for t, _ in part])
            out.append(mean.double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0, 0))


def mean_shift(mu: np.ndarray, mu_ref: np.ndarray, env_phase: np.ndarray, *,
               gripper_index: int, threshold: float, num_env_phases: int) -> dict[str, Any]:
    """mu, mu_ref (R, K, A); env_phase (R,), -1 for none: the module docstring's figures, each
    a list over env phases (None where a phase has no chunk), and over all chunks (`*_all`)."""
    if mu.shape != mu_ref.shape or mu.ndim != 3 or env_phase.shape != mu.shape[:1]:
        raise ValueError(f"mu {mu.shape}, mu_ref {mu_ref.shape} and env_phase "
                         f"{env_phase.shape} must be (R, K, A), (R, K, A) and (R,)")
    diff = mu - mu_ref
    arm = np.delete(diff, gripper_index, axis=2)  # (R, K, A-1)
    grip = diff[:, :, gripper_index]  # (R, K)
    flip = (mu[:, :, gripper_index] > threshold) != (mu_ref[:, :, gripper_index] > threshold)

    def figures(sel: np.ndarray) -> dict[str, float | None]:
        if not sel.any():
            return dict.fromkeys(SHIFTS)
        return {"arm_rms": float(np.sqrt(np.mean(arm[sel] ** 2))),
                "gripper_shift": float(grip[sel].mean()),
                "gripper_rms": float(np.sqrt(np.mean(grip[sel] ** 2))),
                "flip": float(flip[sel].mean())}

    per_phase = [figures(env_phase == p) for p in range(num_env_phases)]
    rows = max(len(env_phase), 1)
    out: dict[str, Any] = {"chunks": [float((env_phase == p).sum() / rows)
                                      for p in range(num_env_phases)]}
    out.update({k: [f[k] for f in per_phase] for k in SHIFTS})
    out.update({f"{k}_all": v for k, v in figures(np.ones(len(env_phase), bool)).items()})
    return out


def chunk_items(trajs: Sequence[Trajectory]) -> tuple[list[tuple[Trajectory, int]], np.ndarray]:
    """Every (trajectory, chunk), and its env phase (R,), -1 where the task reports none."""
    items = [(t, c) for t in trajs for c in range(t.num_chunks)]
    phases = np.array([-1 if t.env_phase_ids is None else int(t.env_phase_ids[c])
                       for t, c in items], dtype=np.int64)
    return items, phases
