"""`make_env(spec)`: parse an environment spec and build the `ChunkEnv`.

Specs: `metaworld:TASK` (e.g. `metaworld:pick-place-v3`) and `libero:SUITE:TASK_INDEX`
(e.g. `libero:libero_object:0`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from trainer_client.envs.base import ChunkEnv

LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")


@dataclass(frozen=True)
class EnvSpec:
    """A parsed environment spec."""

    family: str  # "metaworld" | "libero"
    task: str  # MetaWorld task name, or the LIBERO suite
    task_index: int | None = None  # LIBERO task index in the suite

    @property
    def task_id(self) -> str:
        if self.family == "metaworld":
            return f"metaworld:{self.task}"
        elif self.family == "libero":
            return f"libero:{self.task}:{self.task_index}"
        else:
            raise ValueError(f"unknown env family {self.family!r}")


def parse_env_spec(spec: str) -> EnvSpec:
    """Parse `metaworld:TASK` or `libero:SUITE:TASK_INDEX`; ValueError naming the problem."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"env spec must be a non-empty string, got {spec!r}")
    parts = spec.split(":")
    family = parts[0]
    if family == "metaworld":
        if len(parts) != 2 or not parts[1]:
            raise ValueError(f"bad env spec {spec!r}: expected 'metaworld:TASK'")
        from trainer_client.envs.metaworld_env import metaworld_task_names

        names = metaworld_task_names()
        if parts[1] not in names:
            raise ValueError(
                f"bad env spec {spec!r}: unknown MetaWorld task {parts[1]!r}; known: "
                + ", ".join(names)
            )
        return EnvSpec("metaworld", parts[1])
    elif family == "libero":
        if len(parts) != 3:
            raise ValueError(f"bad env spec {spec!r}: expected 'libero:SUITE:TASK_INDEX'")
        suite, index = parts[1], parts[2]
        if suite not in LIBERO_SUITES:
            raise ValueError(
                f"bad env spec {spec!r}: unknown LIBERO suite {suite!r}; known: "
                + ", ".join(LIBERO_SUITES)
            )
        if not index.isdigit():
            raise ValueError(
                f"bad env spec {spec!r}: task index must be a non-negative integer, got {index!r}"
            )
        return EnvSpec("libero", suite, int(index))
    else:
        raise ValueError(
            f"bad env spec {spec!r}: expected 'metaworld:TASK' or 'libero:SUITE:TASK_INDEX'"
        )


LIBERO_INSTALL = "pip install 'pcm[libero]' (in a clone: pip install -e '.[libero]')"


def check_env_installed(spec: str) -> EnvSpec:
    """Parse `spec` and check that its simulator package is importable; a ValueError with the
    install command otherwise (LIBERO is an extra: the main job needs only MetaWorld)."""
    parsed = parse_env_spec(spec)
    module = {"metaworld": "metaworld", "libero": "libero"}[parsed.family]
    if importlib.util.find_spec(module) is None:
        how = LIBERO_INSTALL if parsed.family == "libero" else "pip install metaworld"
        raise ValueError(f"{spec} needs the {module!r} package, which is not installed: {how}")
    return parsed


def make_env(spec: str, **kw: Any) -> ChunkEnv:
    """Build the env for `spec`. Keyword options go to the env class:

    - MetaWorld: max_steps, seed (base seed of the initial states), render, cameras, image_size
    - LIBERO: max_steps, image_size, hard_reset, settle_steps
    """
    parsed = check_env_installed(spec)
    if parsed.family == "metaworld":
        from trainer_client.envs.metaworld_env import MetaWorldChunkEnv

        return MetaWorldChunkEnv(parsed.task, **kw)
    elif parsed.family == "libero":
        from trainer_client.envs.libero_env import LiberoChunkEnv

        assert parsed.task_index is not None
        return LiberoChunkEnv(parsed.task, parsed.task_index, **kw)
    else:
        raise ValueError(f"unknown env family {parsed.family!r}")
