"""metrics.jsonl: one JSON object per RL step (and per evaluation), appended and flushed as the
run goes, so a crashed or running job can be plotted. On resume, rows after the checkpoint's step
are dropped (those steps run again).

Step rows ("kind": "step") hold: step, success_rate, kept_fraction (kept / chunks of informative
trajectories), kept_chunks, informative_chunks, total_chunks, trajectories,
informative_trajectories, skipped_trajectories, loss, grad_norm, clip_frac, approx_kl, log_std,
env_steps, rollout_s, select_s, backward_s, step_s, wall_s (training wall-clock so far, without
evaluations), keep_probs (per phase, this task), selection_id.
Evaluation rows ("kind": "eval"): step, mode, success_rate, episodes, wall_s.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    def __init__(self, path: Path, *, resume_after: int | None = None) -> None:
        """resume_after=None: start a new file; an int: keep only rows with step <= it."""
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_after is not None and path.exists():
            kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= resume_after]
        # the steps whose held-out evaluation the file holds (kept from before a resume)
        self.eval_steps = {int(r["step"]) for r in kept if r.get("kind") == "eval"}
        with path.open("w") as f:
            for row in kept:
                f.write(json.dumps(row) + "\n")

    def write(self, row: dict[str, Any]) -> None:
        if row.get("kind") == "eval":
            self.eval_steps.add(int(row["step"]))
        with self.path.open("a") as f:
            f.write(json.dumps(_jsonable(row)) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open() as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy / torch scalars
        return _jsonable(value.item())
    return value
