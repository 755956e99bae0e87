"""MetaWorld (v3 tasks) behind the `ChunkEnv` interface.

Observations: `"state"` float32 (39,), the goal-observable MetaWorld state (hand position,
gripper opening, object poses, the previous frame's copy of those, goal position); optionally
`"images"` uint8 (V, H, W, 3) from the named cameras, rendered only at chunk boundaries.
Actions: 4-D (dx, dy, dz, gripper effort), all in [-1, 1]; gripper > 0 closes.

Initial state `i` draws the task's random object/goal placement from a generator seeded with
(seed, i), so it is the same in every process and every call.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from trainer_client.envs.base import ChunkEnv
from trainer_client.types import OBS_IMAGES, OBS_STATE

DEFAULT_MAX_STEPS = 150  # MetaWorld's own limit is 500; the scripted experts need 35-110 steps
DEFAULT_CAMERAS = ("corner",)

# MetaWorld has no language: one short instruction per task.
INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "put the ring onto the peg",
    "basketball-v3": "pick up the ball and dunk it into the basket",
    "bin-picking-v3": "pick the cube from one bin and place it in the other bin",
    "box-close-v3": "pick up the lid and close the box",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button from the top behind the wall",
    "button-press-v3": "press the button",
    "button-press-wall-v3": "press the button behind the wall",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the mug out of the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "pick the ring off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by turning the lock down",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by turning the lock",
    "hand-insert-v3": "insert the gripper into the hole",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open",
    "faucet-open-v3": "turn the faucet handle to open it",
    "faucet-close-v3": "turn the faucet handle to close it",
    "hammer-v3": "hammer the nail into the wall",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "pick-out-of-hole-v3": "pick the peg out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the goal",
    "plate-slide-side-v3": "slide the plate sideways into the goal",
    "plate-slide-back-v3": "slide the plate back out of the goal",
    "plate-slide-back-side-v3": "slide the plate back sideways out of the goal",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "unplug the peg from the side",
    "soccer-v3": "kick the ball into the goal",
    "stick-push-v3": "grasp the stick and push the box with it",
    "stick-pull-v3": "grasp the stick and pull the box with it",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "push-back-v3": "pull the puck back to the goal",
    "reach-v3": "reach the goal position",
    "reach-wall-v3": "reach the goal position behind the wall",
    "shelf-place-v3": "pick up the puck and place it on the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}

# Tasks whose info flags `near_object` (gripper within 3 cm of the object) and `grasp_success`
# (object lifted in the gripper) have that meaning; they give phases 0 approach, 1 at the
# object, 2 object grasped. Other tasks report no env phases.
_STAGED_TASKS = frozenset(
    {
        "pick-place-v3",
        "pick-place-wall-v3",
        "push-v3",
        "push-wall-v3",
        "push-back-v3",
        "shelf-place-v3",
        "bin-picking-v3",
    }
)
NUM_ENV_PHASES = 3


def metaworld_task_names() -> list[str]:
    """The v3 task names of the installed MetaWorld."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return list(ALL_V3_ENVIRONMENTS.keys())


class MetaWorldChunkEnv(ChunkEnv):
    """One MetaWorld v3 task (goal observable) as a `ChunkEnv`."""

    action_dim = 4
    gripper_index = 3
    # The scripted experts command 0 for "open" and 0.6-1 for "closed"; 0.3 separates them.
    gripper_threshold = 0.3
    num_init_states = None

    def __init__(
        self,
        task: str,
        *,
        max_steps: int | None = None,
        seed: int = 0,
        render: bool = False,
        cameras: tuple[str, ...] | list[str] = DEFAULT_CAMERAS,
        image_size: int = 128,
    ) -> None:
        super().__init__()
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        if task not in ALL_V3_ENVIRONMENTS:
            raise ValueError(
                f"unknown MetaWorld task {task!r}; known: {', '.join(ALL_V3_ENVIRONMENTS)}"
            )
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.task = task
        self.task_id = f"metaworld:{task}"
        self.instruction = INSTRUCTIONS.get(task, task.removesuffix("-v3").replace("-", " "))
        self.max_steps = int(max_steps) if max_steps is not None else DEFAULT_MAX_STEPS
        self.seed = int(seed)
        self.obs_keys = (OBS_STATE, OBS_IMAGES) if render else (OBS_STATE,)

        env = ALL_V3_ENVIRONMENTS[task]()
        # The same set-up MetaWorld's goal-observable classes do, but with the placement drawn
        # from env.np_random, which `_reset` seeds per initial state.
        env._partially_observable = False
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env._set_task_called = True
        del env.sawyer_observation_space  # cached property: recompute with the goal visible
        env.max_path_length = max(self.max_steps, env.max_path_length)
        self._env: Any = env
        self._raw_obs: np.ndarray = np.zeros(39)
        self._info: dict[str, float] = {}

        self._cameras = tuple(cameras)
        self._renderer: Any = None
        if render:
            import mujoco

            names = {env.model.camera(i).name for i in range(env.model.ncam)}
            unknown = [c for c in self._cameras if c not in names]
            if not self._cameras or unknown:
                raise ValueError(f"unknown cameras {unknown or '(none)'}; known: {sorted(names)}")
            self._renderer = mujoco.Renderer(env.model, image_size, image_size)

    def _reset(self, init_state: int) -> None:
        seq = np.random.SeedSequence([self.seed, init_state])
        self._env.np_random = np.random.Generator(np.random.PCG64(seq))
        obs, _ = self._env.reset()
        self._raw_obs = obs
        self._info = {}

    def _step(self, action: np.ndarray) -> tuple[float, bool]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obs, reward, _, _, info = self._env.step(action.astype(np.float32))
        self._raw_obs = obs
        self._info = info
        return float(reward), bool(info["success"])

    def _observe(self) -> dict[str, np.ndarray]:
        obs = {OBS_STATE: self._raw_obs.astype(np.float32)}
        if self._renderer is not None:
            views = []
            for cam in self._cameras:
                self._renderer.update_scene(self._env.data, camera=cam)
                # MetaWorld's cameras are mounted upside down: flip rows for upright images.
                views.append(self._renderer.render()[::-1])
            obs[OBS_IMAGES] = np.ascontiguousarray(np.stack(views), dtype=np.uint8)
        return obs

    def env_phase(self) -> int | None:
        """0 approach, 1 at the object, 2 object grasped (staged tasks only, else None)."""
        if self.task not in _STAGED_TASKS:
            return None
        if self._info.get("grasp_success", 0.0) > 0:
            return 2
        if self._info.get("near_object", 0.0) > 0:
            return 1
        return 0

    @property
    def raw_obs(self) -> np.ndarray:
        """float64 (39,): the current MetaWorld observation (what the scripted experts read)."""
        return self._raw_obs

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        if self._env is not None:
            self._env.close()
            self._env = None
