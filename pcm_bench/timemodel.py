"""The learning study's time model: a step's training time on a quiet machine, from what it did.

    t_step = c_env * env_steps + c_row * kept_chunks + c_step

- c_env: rollout seconds per environment step (the simulators and the policy's forward over the
  worker processes), fitted to the rollout stage's time with an intercept c_rollout0;
- c_row: update seconds per backpropagated chunk (its forward and backward), fitted to the
  select and update stages' time with an intercept c_update0 (the optimizer step, the select);
- c_step = c_rollout0 + c_update0.

`pcm-bench timemodel` fits them by least squares to the per-step timings of two short runs
from one checkpoint, full GRPO and random masking at keep 0.2 (so the kept chunks per step span
a 5x range), run alone on the machine. The learning study then compares algorithms at equal
*modelled* time, which does not move when other work shares the machine (the runs' own timings
stay in their records beside it).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pcm_bench.options import as_paths, json_option
from trainer_client.cli_options import build
from trainer_client.config_fields import check_fields, opt
from trainer_client.machine import machine
from trainer_client.train.config import DEMO_ENV, TrainConfig
from trainer_client.train.metrics import read_metrics
from trainer_client.train.rl import train_rl


@dataclass(frozen=True)
class TimeModel:
    c_env: float  # s per env step (rollout)
    c_rollout0: float  # s per step (rollout intercept)
    c_row: float  # s per kept chunk (update)
    c_update0: float  # s per step (select + update intercept)

    def step_s(self, env_steps: float, kept_chunks: float) -> float:
        return (self.c_env * env_steps + self.c_rollout0
                + self.c_row * kept_chunks + self.c_update0)

    def run_s(self, env_steps: Sequence[float], kept_chunks: Sequence[float]) -> np.ndarray:
        """Cumulative modelled time after each step, (S,)."""
        e, k = np.asarray(env_steps, dtype=np.float64), np.asarray(kept_chunks, dtype=np.float64)
        return np.cumsum(self.c_env * e + self.c_rollout0 + self.c_row * k + self.c_update0)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TimeModel:
        return cls(**{k: float(data[k]) for k in ("c_env", "c_rollout0", "c_row",
                                                   "c_update0")})

    @classmethod
    def load(cls, path: Path) -> TimeModel:
        data = json.loads(Path(path).read_text())
        return cls.from_dict(data.get("model", data))


def fit_time_model(rows: Sequence[dict[str, Any]]) -> tuple[TimeModel, dict[str, float]]:
    """Least squares over metrics.jsonl step rows (env_steps, kept_chunks, rollout_s, select_s,
    backward_s); returns the model and the fit's relative residual per stage and per step."""
    e = np.array([r["env_steps"] for r in rows], dtype=np.float64)
    k = np.array([r["kept_chunks"] for r in rows], dtype=np.float64)
    roll = np.array([r["rollout_s"] for r in rows], dtype=np.float64)
    upd = np.array([r["select_s"] + r["backward_s"] for r in rows], dtype=np.float64)
    (c_env, c_r0), *_ = np.linalg.lstsq(np.c_[e, np.ones_like(e)], roll, rcond=None)
    (c_row, c_u0), *_ = np.linalg.lstsq(np.c_[k, np.ones_like(k)], upd, rcond=None)
    model = TimeModel(float(c_env), float(c_r0), float(c_row), float(c_u0))
    predicted = np.array([model.step_s(a, b) for a, b in zip(e, k, strict=True)])
    fit = {
        "rollout_rel_rmse": float(np.sqrt(np.mean((c_env * e + c_r0 - roll) ** 2)) / roll.mean()),
        "update_rel_rmse": float(np.sqrt(np.mean((c_row * k + c_u0 - upd) ** 2)) / upd.mean()),
        "step_rel_rmse": float(np.sqrt(np.mean((predicted - roll - upd) ** 2))
                               / (roll + upd).mean()),
    }
    return model, fit


@dataclass
class TimeModelConfig:
    """`pcm-bench timemodel`: its flags are these fields (`trainer_client.cli_options`)."""

    init: Path = field(metadata={"help": "the study's SFT checkpoint",
                                 "typer": {"exists": True, "dir_okay": False}})
    env: str = opt(DEMO_ENV, "metaworld:TASK")
    steps: int = opt(6, "steps of each calibration run", ge=3)
    init_states: int = opt(TrainConfig.init_states, "initial states per step", ge=1)
    group_size: int = opt(TrainConfig.group_size, "G: rollouts per initial state", ge=2)
    out: Path = field(default=Path("runs/bench-timemodel"),
                      metadata={"help": "the calibration runs' dir"})
    json_path: Path | None = field(default=None, metadata=json_option(
        "write the model here (pcm-bench learning --time-model reads it)"))
    num_workers: int = opt(-1, "env worker processes; -1 = auto", cli=False)
    threads: int = opt(0, "torch threads; 0 = all cores", cli=False)

    def __post_init__(self) -> None:
        as_paths(self, "init", "out", "json_path")
        check_fields(self)


def run_time_model_bench(config: TimeModelConfig, log: Callable[[str], None] = print
                         ) -> dict[str, Any]:
    """Two short runs (grpo; random at keep 0.2) from `init`, their first step left out (warm-up),
    and the fit. The load average before and after says whether the machine was quiet."""
    c = config
    out, init, env, steps = c.out, c.init, c.env, c.steps
    init_states, group_size = c.init_states, c.group_size
    out.mkdir(parents=True, exist_ok=True)
    load_before = list(os.getloadavg())
    rows: list[dict[str, Any]] = []
    for algo in ("grpo", "random"):
        cfg = build(TrainConfig, dict(
            env=env, selector="embedded", run_id=f"timemodel-{algo}", out=str(out / algo),
            init=str(init), steps=steps, seed=0, group_size=group_size,
            init_states=init_states, keep_fraction=0.2, budget_rule="fixed", eval_every=0,
            checkpoint_every=steps, keep_checkpoints=1, num_workers=c.num_workers,
            threads=c.threads, progress=False, trainer_id="timemodel"))
        log(f"timemodel: {algo}, {steps} steps")
        t0 = time.perf_counter()
        result = train_rl(cfg, log_line=lambda _line: None)
        step_rows = [r for r in read_metrics(result.metrics) if r.get("kind", "step") == "step"]
        rows += step_rows[1:]
        log(f"  {algo}: {time.perf_counter() - t0:.0f}s")
    model, fit = fit_time_model(rows)
    return {
        "benchmark": "timemodel",
        "task": env,
        "checkpoint": str(init),
        "config": {"steps": steps, "init_states": init_states, "group_size": group_size},
        "machine": machine(loadavg_before=load_before, loadavg_after=list(os.getloadavg()),
                           date=time.strftime("%Y-%m-%d")),
        "model": model.to_dict(),
        "fit": fit,
        "rows": [{k: r[k] for k in ("step", "env_steps", "kept_chunks", "rollout_s", "select_s",
                                    "backward_s")} for r in rows],
    }
