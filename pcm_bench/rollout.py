"""`pcm-bench rollout`: rollout throughput of the two env backends side by side.

- `workers` (the default of `RolloutCollector`): the env slots spread over a few spawned worker
  processes (`--num-workers`), one message per worker and chunk round;
- `gymnasium`: gymnasium's `AsyncVectorEnv`, one spawned process per env slot
  (`trainer_client.vector_env`).

Both collect the same GRPO step (`--init-states` x `--group-size` rollouts of one task, one env
slot per rollout, as a training run does) from the same Gaussian chunk policy in this process,
so the policy's share is the same and small; the backends alternate call by call after an
untimed warm-up call each (their env builds), so drift in the machine's load hits both. Per
call: its wall-clock, the time spent waiting for the envs, env steps per second; per backend:
the processes it runs and their resident memory (VmRSS summed over them after the calls).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pcm_bench.options import as_paths, json_option, one_of, split
from pcm_bench.servers import child_pids
from trainer_client.config_fields import check_fields, opt
from trainer_client.rollout import RolloutCollector
from trainer_client.train.config import DEMO_ENV, DEMO_MAX_STEPS, TrainConfig
from trainer_client.types import OBS_STATE

BACKENDS = ("workers", "gymnasium")


@dataclass
class RolloutBenchConfig:
    """`pcm-bench rollout`: its flags are these fields (`trainer_client.cli_options`)."""

    json_path: Path | None = field(default=None, metadata=json_option())
    env: str = opt(DEMO_ENV, "metaworld:TASK or libero:SUITE:INDEX")
    backends: str = opt(",".join(BACKENDS), "comma-separated: workers,gymnasium")
    init_states: int = opt(TrainConfig.init_states, "initial states per step", ge=1)
    group_size: int = opt(TrainConfig.group_size, "G: rollouts per initial state", ge=1)
    calls: int = opt(3, "timed collect calls per backend (after one untimed)", ge=1)
    num_workers: int = opt(2, "worker processes of the workers backend", ge=1)
    max_steps: int = opt(DEMO_MAX_STEPS, "episode step limit", ge=1)
    chunk_size: int = opt(8, "K: actions per chunk", ge=1)

    def __post_init__(self) -> None:
        as_paths(self, "json_path")
        check_fields(self)
        one_of("backends", self.backend_list(), BACKENDS)

    def backend_list(self) -> tuple[str, ...]:
        return split(self.backends, str, "backends")


class GaussianChunkPolicy:
    """Gaussian action chunks around a state-dependent mean: cheap next to the envs, and the
    same draws for both backends (seeded per call)."""

    def __init__(self, chunk_size: int, action_dim: int) -> None:
        self.chunk_size, self.action_dim = chunk_size, action_dim

    def act(self, obs: dict[str, np.ndarray], instructions: list[str],
            deterministic: bool = False) -> tuple[np.ndarray, np.ndarray]:
        state = obs[OBS_STATE][:, : self.action_dim]
        mean = np.repeat(0.3 * np.tanh(state)[:, None, :], self.chunk_size, axis=1)
        noise = 0.5 * np.random.standard_normal(mean.shape)
        return (mean + noise).astype(np.float32), np.zeros(len(instructions), np.float32)


def _env_processes() -> set[int]:
    """This process's spawned children that run envs (multiprocessing's resource tracker is a
    child too, shared by both backends)."""
    found = set()
    for pid in child_pids(os.getpid()):
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.add(pid)
        except OSError:
            continue
    return found


def _rss_mib(pids: list[int]) -> float:
    total_kib = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib / 1024


def run_rollout_bench(config: RolloutBenchConfig, log: Any = print) -> dict[str, Any]:
    c = config
    backends = c.backend_list()
    inits = list(range(c.init_states))
    calls: dict[str, list[dict[str, float]]] = {b: [] for b in backends}
    processes: dict[str, dict[str, float]] = {}
    load_before = list(os.getloadavg())
    collectors: dict[str, RolloutCollector] = {}
    pids: dict[str, list[int]] = {}
    try:
        for b in backends:  # built one after the other, so each one's processes are known
            before = _env_processes()
            collectors[b] = RolloutCollector(c.env, num_workers=c.num_workers,
                                             max_steps=c.max_steps, env_backend=b)
            collectors[b].collect(GaussianChunkPolicy(c.chunk_size, collectors[b].info.action_dim),
                                  inits, group_size=c.group_size, seed=0)  # untimed warm-up
            pids[b] = sorted(_env_processes() - before)
            log(f"rollout: {b} built, {len(pids[b])} processes")
        for i in range(1, c.calls + 1):
            for b in backends:
                collector = collectors[b]
                policy = GaussianChunkPolicy(c.chunk_size, collector.info.action_dim)
                t0 = time.perf_counter()
                collector.collect(policy, inits, group_size=c.group_size, seed=i)
                wall = time.perf_counter() - t0
                s = collector.last_stats
                calls[b].append({"wall_s": wall, "env_s": s.env_s, "policy_s": s.policy_s,
                                 "env_steps": s.num_steps, "steps_per_s": s.num_steps / wall})
                log(f"rollout: {b} call {i}: {wall:.2f}s, {s.num_steps / wall:.0f} env steps/s")
        for b in backends:
            processes[b] = {"processes": len(pids[b]), "rss_mib": _rss_mib(pids[b])}
    finally:
        for collector in collectors.values():
            collector.close()
    rows: list[dict[str, Any]] = []
    for b in backends:
        rows.append({
            "backend": b,
            "wall_s_median": statistics.median(r["wall_s"] for r in calls[b]),
            "env_s_median": statistics.median(r["env_s"] for r in calls[b]),
            "steps_per_s_median": statistics.median(r["steps_per_s"] for r in calls[b]),
            **processes.get(b, {}),
            "calls": calls[b],
        })
    base = float(rows[0]["wall_s_median"])
    for r in rows:
        r["wall_vs_first"] = r["wall_s_median"] / base
    return {"benchmark": "rollout", "env": c.env,
            "config": {"init_states": c.init_states, "group_size": c.group_size,
                       "calls": c.calls, "num_workers": c.num_workers,
                       "max_steps": c.max_steps, "chunk_size": c.chunk_size},
            "load_before": load_before, "load_after": list(os.getloadavg()), "rows": rows}
