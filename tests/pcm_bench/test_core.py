"""`pcm-bench core --json PATH` writes one row per shape (structure only: no timing asserts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from pcm_bench.cli import app


def test_core_bench_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "core.json"
    result = CliRunner().invoke(app, ["core", "--repeats", "10", "--json", str(out)])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    rows = written["results"]
    assert [r["shape"] for r in rows] == [
        {"trajectories": 256, "chunks": 64, "feature_dim": 56},
        {"trajectories": 512, "chunks": 64, "feature_dim": 56},
    ]
    for r in rows:
        assert 0 < r["median_ms"] <= r["p99_ms"]
    # what it was measured on, with the versions that decide the figures
    assert written["machine"]["cpus"] >= 1
    assert written["machine"]["packages"]["numpy"] == np.__version__
