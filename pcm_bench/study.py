"""A resumable study: one run per (algo, seed), each finished run appended to OUT/runs.jsonl as
one JSON line, so that a long study runs in pieces: rerunning the same command skips the finished
runs and continues. `pcm-bench learning` and `pcm-bench replay` are such studies.

- `Study.open(out, config, init)`: the study in OUT for this configuration. Every record carries
  the fingerprint of the configuration it was made under (`fingerprint`: the configuration's
  JSON and the start checkpoint's bytes); records of another configuration are refused, naming
  what to do.
- `Study.pending(algos, seeds)`: the (seed, algo) pairs still to run, seed-major (the algorithms
  interleaved, so that load on the machine hits them alike), while the budget lasts: a run
  starts only if the longest recorded run of its algorithm still fits (an algorithm not run yet
  always starts).
- `Study.append(record)`: a finished run, recorded with the fingerprint and the configuration.
- `load_runs(out)`: the recorded runs; the last record of an (algo, seed) wins.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUNS_FILE = "runs.jsonl"


class StudyError(ValueError):
    """A study that cannot run as asked (the CLI prints it and exits 2)."""


def fingerprint(config: dict[str, Any], init: Path) -> str:
    """16 hex digits of the SHA-256 of the configuration's JSON (keys sorted) and the start
    checkpoint's bytes (none where it is not a file)."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(init.read_bytes() if init.is_file() else b"")
    return h.hexdigest()[:16]


def load_runs(out: Path) -> list[dict[str, Any]]:
    """The finished runs recorded in OUT/runs.jsonl (the last record of an (algo, seed) wins)."""
    path = Path(out) / RUNS_FILE
    if not path.is_file():
        return []
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            records[(r["algo"], r["seed"])] = r
    return list(records.values())


def complete(runs: Iterable[dict[str, Any]], algos: Sequence[str], seeds: range) -> bool:
    """Whether `runs` hold every (algo, seed)."""
    have = {(r["algo"], r["seed"]) for r in runs}
    return all((a, s) in have for a in algos for s in seeds)


@dataclass
class Study:
    """A study directory opened for one configuration (see the module docstring)."""

    out: Path
    config: dict[str, Any]
    fingerprint: str
    done: list[dict[str, Any]]  # the runs recorded when it was opened
    budget_s: float = math.inf
    started: float = field(default_factory=time.perf_counter)
    durations: dict[str, float] = field(default_factory=dict)  # longest run per algo

    @classmethod
    def open(cls, out: Path, config: dict[str, Any], init: Path, *, summarize_only: bool = False,
             budget_s: float = math.inf, started: float | None = None) -> Study:
        """The study in OUT for `config` and the start checkpoint `init`; `budget_s` bounds the
        runs started from `started` (default: now). StudyError where OUT holds runs of another
        configuration, or with `summarize_only` where it holds none."""
        out = Path(out)
        digest = fingerprint(config, Path(init))
        done = load_runs(out)
        for record in done:
            if record["fingerprint"] != digest:
                raise StudyError(
                    f"{out / RUNS_FILE} holds runs of another configuration (another "
                    "checkpoint, or other settings); use another --out for this one (theirs: "
                    f"{record['config']}, this: {config})")
        if summarize_only and not done:
            raise StudyError(f"{out / RUNS_FILE} holds no finished run: nothing to summarize")
        durations: dict[str, float] = {}
        for r in done:
            durations[r["algo"]] = max(durations.get(r["algo"], 0.0), r["duration_s"])
        return cls(out, config, digest, done, budget_s,
                   time.perf_counter() if started is None else started, durations)

    def pending(self, algos: Sequence[str], seeds: range,
                finished: Callable[[dict[str, Any]], bool] = lambda _record: True,
                log: Callable[[str], None] = print, name: str = "study",
                ) -> Iterator[tuple[int, str]]:
        """The (seed, algo) pairs to run, seed-major, skipping those recorded and `finished`,
        until the next one would not fit in the budget (said through `log`, prefixed `name`).
        Lazy: the budget is checked when the next pair is asked for, after the last run's
        `append`."""
        have = {(r["algo"], r["seed"]) for r in self.done if finished(r)}
        for seed in seeds:
            for algo in algos:
                if (algo, seed) in have:
                    continue
                expected = self.durations.get(algo, 0.0)  # an algorithm not run yet: none
                if time.perf_counter() - self.started + expected > self.budget_s:
                    log(f"{name}: the budget ({self.budget_s:.0f}s) would end during {algo} "
                        f"seed {seed} (~{expected:.0f}s); rerun the same command to continue")
                    return
                yield seed, algo

    def append(self, record: dict[str, Any]) -> None:
        """Record a finished run (an algo, a seed and its `duration_s`), adding the fingerprint
        and the configuration to it."""
        record.update(fingerprint=self.fingerprint, config=self.config)
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / RUNS_FILE).open("a") as f:
            f.write(json.dumps(record) + "\n")
        algo = record["algo"]
        self.durations[algo] = max(self.durations.get(algo, 0.0), record["duration_s"])

    def runs(self) -> list[dict[str, Any]]:
        """Every run recorded so far (`load_runs`)."""
        return load_runs(self.out)
