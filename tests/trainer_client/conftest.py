"""Shared fixtures: a tiny SFT checkpoint on MetaWorld reach-v3 that succeeds part of the time
(so RL groups have mixed outcomes and the selector has informative trajectories to mask)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcm_contract.cli_options import build
from trainer_client.train.config import SFTConfig, TrainConfig
from trainer_client.train.sft import SFTResult, run_sft

TASK = "metaworld:reach-v3"
MAX_STEPS = 80  # 10 chunks of K=8: keep fraction 0.2 keeps 2 of a failed episode's chunks


def tiny_sft_config(out: Path, **overrides: object) -> SFTConfig:
    kw: dict[str, object] = dict(
        env=TASK,
        out=str(out),
        episodes=20,
        iters=200,
        preset="tiny",
        width=32,
        max_steps=48,
        init_log_std=-1.0,
        lr=3e-3,
        eval_episodes=0,
        num_workers=0,
        threads=1,
        progress=False,
    )
    kw.update(overrides)
    return build(SFTConfig, kw)  # num_workers, threads, progress: its runtime's (--threads)


@pytest.fixture(scope="session")
def sft_result(tmp_path_factory: pytest.TempPathFactory) -> SFTResult:
    return run_sft(tiny_sft_config(tmp_path_factory.mktemp("sft")), log=lambda _m: None)


@pytest.fixture(scope="session")
def sft_checkpoint(sft_result: SFTResult) -> Path:
    return sft_result.checkpoint


def tiny_rl_config(out: Path, init: Path, **overrides: object) -> TrainConfig:
    kw: dict[str, object] = dict(
        env=TASK,
        out=str(out),
        init=str(init),
        steps=2,
        init_states=4,
        group_size=4,
        max_steps=MAX_STEPS,
        checkpoint_every=1,
        num_workers=0,
        threads=1,
        progress=False,
        trainer_id="test-trainer",
        lr=1e-3,
    )
    kw.update(overrides)
    return build(TrainConfig, kw)  # lr is the nested GRPO config's (--lr)
