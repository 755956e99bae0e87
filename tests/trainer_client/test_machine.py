"""`machine()`: the record of what a figure was measured on."""

from __future__ import annotations

import os

import mujoco
import numpy as np
import pytest

from trainer_client.machine import PACKAGES, machine, package_versions


def test_package_versions_are_the_installed_ones_and_none_where_absent() -> None:
    versions = package_versions(("numpy", "pytest", "no-such-distribution-pcm"))
    assert versions == {"numpy": np.__version__, "pytest": pytest.__version__,
                        "no-such-distribution-pcm": None}


def test_machine_holds_the_simulators_versions_and_a_benchmarks_own_fields() -> None:
    m = machine(loadavg_end=[1.0, 0.5, 0.25], date="2026-12-06")
    assert m["cpus"] == os.cpu_count()
    assert set(m["packages"]) == set(PACKAGES)
    assert m["packages"]["numpy"] == np.__version__
    assert m["packages"]["mujoco"] == mujoco.__version__
    assert m["loadavg_end"] == [1.0, 0.5, 0.25] and m["date"] == "2026-12-06"
