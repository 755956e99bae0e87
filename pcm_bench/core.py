"""`pcm-bench core`: latency of the core selection (and of the embedded select path) per shape."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pcm_bench.options import as_paths, json_option
from pcm_contract.run_config import RunConfigSchema
from selector_service.core import ChunkBatch, RunConfig, select_chunks
from trainer_client.config_fields import check_fields, opt

DEFAULT_SHAPES = ((256, 64, 56), (512, 64, 56))


@dataclass(frozen=True)
class Shape:
    trajectories: int
    chunks: int
    feature_dim: int

    def label(self) -> str:
        return f"{self.trajectories}x{self.chunks}x{self.feature_dim}"


def synthetic_request(shape: Shape, num_phases: int = RunConfigSchema.phases, group_size: int = 8,
                      seed: int = 0) -> dict[str, Any]:
    """A GRPO-shaped batch: groups of `group_size`, mixed outcomes, contiguous phases."""
    rng = np.random.default_rng(seed)
    n, c, d = shape.trajectories, shape.chunks, shape.feature_dim
    phases = np.minimum(np.arange(c) * num_phases // c, num_phases - 1)
    success = rng.random(n) < 0.5
    return {
        "request_id": "bench",
        "trainer_id": "bench",
        "step": 0,
        "trajectories": [
            {"task_id": f"task{i // (group_size * 8)}", "group_id": f"g{i // group_size}",
             "success": bool(success[i]), "phase_ids": phases,
             "action_features": rng.standard_normal((c, d)).astype(np.float32)}
            for i in range(n)
        ],
    }


def _percentiles(samples: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples) * 1e3
    return float(np.median(arr)), float(np.percentile(arr, 99))


@dataclass
class CoreConfig:
    """`pcm-bench core`: its flags are these fields (`trainer_client.cli_options`)."""

    json_path: Path | None = field(default=None, metadata=json_option())
    repeats: int = opt(200, "timed selects per shape", ge=10)
    shapes: tuple[tuple[int, int, int], ...] = opt(DEFAULT_SHAPES, "(trajectories, chunks, "
                                                   "feature_dim) per row", cli=False)
    warmup: int = opt(10, "untimed selects first", cli=False, ge=0)

    def __post_init__(self) -> None:
        as_paths(self, "json_path")
        check_fields(self)


def run_core_bench(bench: CoreConfig) -> list[dict[str, Any]]:
    """Per shape: the core `select_chunks` on a validated batch (state carried from call to
    call, as in a run), and the whole embedded `select` (pydantic validation of the request,
    flattening, selection, answer) through `trainer_client.connect("embedded")`."""
    from trainer_client import connect

    repeats, warmup, shapes = bench.repeats, bench.warmup, bench.shapes
    rows = []
    for dims in shapes:
        shape = Shape(*dims)
        req = synthetic_request(shape)
        config = RunConfig(feature_dim=shape.feature_dim)
        trajs = req["trajectories"]
        batch = ChunkBatch.from_trajectories(
            [t["task_id"] for t in trajs], [t["group_id"] for t in trajs],
            np.array([t["success"] for t in trajs]), [t["phase_ids"] for t in trajs],
            [t["action_features"] for t in trajs], config.phases, config.feature_dim)
        states: dict = {}
        core_times = []
        for r in range(warmup + repeats):
            t0 = time.perf_counter()
            sel = select_chunks(config, batch, states, f"req-{r}")
            elapsed = time.perf_counter() - t0
            states = sel.new_states
            if r >= warmup:
                core_times.append(elapsed)

        client = connect("embedded")
        client.put_run("bench", feature_dim=shape.feature_dim)
        embedded_times = []
        for r in range(warmup + repeats // 4):
            t0 = time.perf_counter()
            client.select("bench", {**req, "request_id": f"req-{r}"})
            elapsed = time.perf_counter() - t0
            if r >= warmup:
                embedded_times.append(elapsed)

        median_ms, p99_ms = _percentiles(core_times)
        emb_median, emb_p99 = _percentiles(embedded_times)
        rows.append({
            "shape": {"trajectories": shape.trajectories, "chunks": shape.chunks,
                      "feature_dim": shape.feature_dim},
            "median_ms": round(median_ms, 3),
            "p99_ms": round(p99_ms, 3),
            "repeats": repeats,
            "embedded_median_ms": round(emb_median, 3),
            "embedded_p99_ms": round(emb_p99, 3),
        })
    return rows
