"""Environment adapters (MetaWorld, LIBERO) behind one chunked-rollout interface.

Importing this package sets `MUJOCO_GL=egl` unless already set, so that offscreen rendering
works on headless CPU machines; it must happen before mujoco is first imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from trainer_client.envs.base import ChunkEnv, ChunkStep
from trainer_client.envs.factory import (
    LIBERO_SUITES,
    EnvSpec,
    make_env,
    parse_env_spec,
)

__all__ = ["LIBERO_SUITES", "ChunkEnv", "ChunkStep", "EnvSpec", "make_env", "parse_env_spec"]
