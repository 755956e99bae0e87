"""Fixtures of the end-to-end tests: real processes on 127.0.0.1 only, every wait bounded.

- ``sft_policy`` (session): a tiny policy behaviour-cloned on MetaWorld reach-v3 by
  `pcm-train sft` (a few seconds), so that RL rollouts succeed about half of the time. A fresh
  policy never succeeds: every GRPO group is then uninformative, no phase is ever scored and
  the keep probabilities stay uniform, which would leave nothing to check.
- ``trainers``: launches `pcm-train rl --selector grpc://...` subprocesses (tiny sizes) and
  kills whatever still runs at teardown.

The servers (``isolated_redis_server``, ``selector_factory``, ``prometheus_factory``) come from
tests/fixtures/servers.py: a missing `redis-server` or `prometheus` binary fails the test with
the Debian package to install (never a skip).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from pcm_bench.servers import log_tail

TRAIN_ENV = "metaworld:reach-v3"
TASK_ID = TRAIN_ENV  # the task id the trainer sends for a MetaWorld env
PHASES = 4
MAX_STEPS = 60  # env steps per episode (reach-v3's expert needs far fewer)
SFT_TIMEOUT_S = 180.0
TRAINER_TIMEOUT_S = 150.0


def _cli_argv(command: str) -> list[str]:
    """`pcm-train COMMAND`: the console script of this interpreter when installed, else the
    module it runs (trainer_client.cli:main)."""
    script = Path(sys.executable).with_name("pcm-train")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), command]
    return [sys.executable, "-m", "trainer_client.cli", command]


def _child_env() -> dict[str, str]:
    """This process's environment without PCM_* (no stray token or selector settings); one
    torch/BLAS thread per trainer, so several share the two cores without oversubscription."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCM_")}
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _tail(path: Path, lines: int = 40) -> str:
    return log_tail(path, lines)


# ---------------------------------------------------------------------------------------------
# the policy the trainers start from
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sft_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sft")
    argv = [
        *_cli_argv("sft"),
        "--env",
        TRAIN_ENV,
        "--out",
        str(out),
        "--episodes",
        "32",
        "--iters",
        "400",
        "--preset",
        "tiny",
        "--max-steps",
        str(MAX_STEPS),
        "--labels",
        "expert",
        # Action noise std 1.0: rollouts from one initial state then succeed or fail by chance,
        # so GRPO groups mix outcomes (with std 0.22 the initial state alone decided and whole
        # groups came out all-success or all-failure, leaving nothing to score).
        "--init-log-std",
        "0.0",
        "--eval-episodes",
        "0",
        "--num-workers",
        "0",
        "--threads",
        "1",
        "--seed",
        "0",
        "--no-progress",
    ]
    log = out / "sft.log"
    with log.open("wb") as f:
        try:
            proc = subprocess.run(
                argv,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_child_env(),
                cwd=out,
                timeout=SFT_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"pcm-train sft took over {SFT_TIMEOUT_S} s:\n{_tail(log)}")
    policy = out / "sft.pt"
    assert proc.returncode == 0 and policy.is_file(), (
        f"pcm-train sft failed ({proc.returncode}):\n{_tail(log)}"
    )
    return policy


# ---------------------------------------------------------------------------------------------
# trainers
# ---------------------------------------------------------------------------------------------


@dataclass
class Trainer:
    """One `pcm-train rl` subprocess."""

    trainer_id: str
    out: Path
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ended_at: float | None = None
    returncode: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def step_rows(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        rows = [
            json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()
        ]
        return [r for r in rows if r.get("kind", "step") == "step"]

    def log_tail(self) -> str:
        return _tail(self.log_path)

    def poll(self) -> int | None:
        if self.proc is not None and self.returncode is None:
            self.returncode = self.proc.poll()
            if self.returncode is not None:
                self.ended_at = time.monotonic()
        return self.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Trainers:
    """Launches `pcm-train rl` against a selector; `kill_all` at teardown."""

    def __init__(self, root: Path, policy: Path) -> None:
        self.root = root
        self.policy = policy
        self.launched: list[Trainer] = []

    def spec(
        self,
        selector_url: str,
        run_id: str,
        trainer_id: str,
        *,
        seed: int,
        steps: int = 3,
        init_states: int = 2,
        group_size: int = 4,
        resume: bool = False,
    ) -> Trainer:
        """A trainer of `steps` steps in all; with `resume`, one continuing from its checkpoint
        in the same --out (a restarted container)."""
        out = self.root / trainer_id
        argv = [
            *_cli_argv("rl"),
            "--algo",
            "pcm",
            "--selector",
            selector_url,
            "--env",
            TRAIN_ENV,
            "--run-id",
            run_id,
            "--trainer-id",
            trainer_id,
            "--out",
            str(out),
            "--init",
            str(self.policy),
            "--steps",
            str(steps),
            "--seed",
            str(seed),
            "--init-states",
            str(init_states),
            "--group-size",
            str(group_size),
            "--max-steps",
            str(MAX_STEPS),
            "--phases",
            str(PHASES),
            "--keep-fraction",
            "0.5",
            "--checkpoint-every",
            str(steps),
            "--keep-checkpoints",
            "1",
            "--num-workers",
            "0",
            "--threads",
            "1",
            "--no-progress",
            *(["--resume"] if resume else []),
        ]
        return Trainer(
            trainer_id,
            out,
            argv,
            self.root / f"{trainer_id}.log",
            extra={"steps": steps, "trajectories": steps * init_states * group_size},
        )

    def start(self, trainer: Trainer) -> Trainer:
        self.root.mkdir(parents=True, exist_ok=True)
        with trainer.log_path.open("ab") as log:
            trainer.proc = subprocess.Popen(
                trainer.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_child_env(),
                cwd=self.root,
            )
        trainer.started_at = time.monotonic()
        self.launched.append(trainer)
        return trainer

    def run_concurrently(
        self, trainers: list[Trainer], timeout: float = TRAINER_TIMEOUT_S
    ) -> list[Trainer]:
        """Start all, then wait for all (bounded); a trainer still running at the deadline is
        killed and the test fails with the logs."""
        for trainer in trainers:
            self.start(trainer)
        deadline = time.monotonic() + timeout
        while any(t.poll() is None for t in trainers):
            if time.monotonic() > deadline:
                late = [t for t in trainers if t.poll() is None]
                for t in late:
                    t.kill()
                pytest.fail(
                    f"trainers {[t.trainer_id for t in late]} still running after "
                    f"{timeout} s:\n"
                    + "\n\n".join(f"--- {t.trainer_id}\n{t.log_tail()}" for t in late)
                )
            time.sleep(0.1)
        return trainers

    def kill_all(self) -> None:
        for trainer in self.launched:
            trainer.kill()


@pytest.fixture
def trainers(tmp_path: Path, sft_policy: Path) -> Iterator[Trainers]:
    launcher = Trainers(tmp_path / "trainers", sft_policy)
    try:
        yield launcher
    finally:
        launcher.kill_all()


def assert_trainers_succeeded(trainers: list[Trainer]) -> None:
    failed = [t for t in trainers if t.returncode != 0]
    assert not failed, "\n\n".join(
        f"--- {t.trainer_id} exited {t.returncode}:\n{t.log_tail()}" for t in failed
    )


def assert_ran_concurrently(trainers: list[Trainer]) -> None:
    """Every trainer was started before any of them ended."""
    last_start = max(t.started_at for t in trainers)
    first_end = min(t.ended_at or float("inf") for t in trainers)
    assert last_start < first_end, "the trainers did not run at the same time"


# ---------------------------------------------------------------------------------------------
# Redis history
# ---------------------------------------------------------------------------------------------


def history_entries(redis_url: str, run_id: str) -> list[dict[str, Any]]:
    """The run's capped history stream `pcm:{RUN}:history`, oldest first (field `e`: JSON)."""
    with redis.Redis.from_url(redis_url) as client:
        entries = client.xrange(f"pcm:{{{run_id}}}:history")
    return [json.loads(fields[b"e"]) for _, fields in entries]
