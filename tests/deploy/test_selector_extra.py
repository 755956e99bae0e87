"""`pip install '.[selector]'` gives a working selector without torch (README, "Set-up").

A fresh virtual environment (no system site packages) gets the project with the `selector`
extra only, non-editable, from a copy of the sources; `pcm-selector serve` then starts on free
127.0.0.1 ports with the memory store, answers one Select over HTTP and stops on SIGTERM, and
`import torch` fails in that environment. Uses pip's cache and the configured indexes; skipped
only when pip cannot reach a package index.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "pcm_contract", "selector_service", "trainer_client",
           "pcm_bench")
# What pip prints when no package index can be reached (then the test is skipped, not failed).
OFFLINE = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
           "Failed to establish a new connection", "No matching distribution found for setuptools")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http(method: str, url: str, body: object | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _install(tmp_path: Path) -> Path:
    """A venv with `<copy of the repo>[selector]` installed; returns its bin directory."""
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_USER")}
    done = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q",
         f"{src}[selector]"],
        env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        output = done.stdout + done.stderr
        if any(marker in output for marker in OFFLINE):
            pytest.skip(f"pip cannot reach a package index: {output.strip()[-500:]}")
        pytest.fail(f"pip install '.[selector]' failed:\n{output[-3000:]}", pytrace=False)
    return bin_dir


def test_the_selector_extra_serves_without_torch(tmp_path: Path) -> None:
    bin_dir = _install(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCM_") and k != "PYTHONPATH"}
    no_torch = subprocess.run([str(bin_dir / "python"), "-c", "import torch"], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr, (
        "torch is importable in a venv with only the selector extra")

    http_port, grpc_port = _free_port(), _free_port()
    env |= {"PCM_STORE": "memory", "PCM_HOST": "127.0.0.1", "PCM_HTTP_PORT": str(http_port),
            "PCM_GRPC_PORT": str(grpc_port), "PCM_LOG_LEVEL": "WARNING"}
    log = (tmp_path / "selector.log").open("w")
    proc = subprocess.Popen([str(bin_dir / "pcm-selector"), "serve"], env=env, cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "selector.log").read_text()[-3000:]
            try:
                if _http("GET", f"{base}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "pcm-selector serve did not become ready"
            time.sleep(0.2)
        status, info = _http("PUT", f"{base}/v1/runs/venv-run", {"feature_dim": 2})
        assert status == 200, info
        batch = {"request_id": "venv-1", "trajectories": [
            {"task_id": "t", "group_id": "g", "success": success, "phase_ids": [0, 1, 2, 3],
             "action_features": [[0.5, -0.25]] * 4} for success in (True, False)]}
        status, answer = _http("POST", f"{base}/v1/runs/venv-run/select", batch)
        assert status == 200, answer
        assert [len(m) for m in answer["masks"]] == [4, 4]
        assert answer["total_chunks"] == 8 and answer["selection_id"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        log.close()
    assert code == 0, (tmp_path / "selector.log").read_text()[-3000:]
