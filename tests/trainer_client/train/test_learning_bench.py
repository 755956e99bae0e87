"""`pcm-bench learning` at toy sizes: the JSON figures and the PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer_client.train.conftest import MAX_STEPS, TASK
from trainer_client.bench.learning import merge_results, print_table, run_learning_bench


def test_learning_bench_writes_figures_and_plot(sft_checkpoint: Path, tmp_path: Path) -> None:
    result = run_learning_bench(
        tmp_path,
        init=sft_checkpoint,
        env=TASK,
        max_seeds=3,
        steps=2,
        budget_s=1.0,
        init_states=4,
        group_size=4,
        eval_every=2,
        eval_episodes=2,
        num_workers=0,
        threads=1,
        rl_overrides={"max_steps": MAX_STEPS},
        log=lambda _m: None,
    )
    assert result["seeds_run"] == 1  # the budget stops after the first seed
    assert [r["algo"] for r in result["runs"]] == ["grpo", "pcm", "random"]
    assert set(result["algos"]) == {"grpo", "pcm", "random"}
    grpo, pcm = result["algos"]["grpo"], result["algos"]["pcm"]
    assert grpo["backward_speedup_vs_grpo"] == pytest.approx(1.0)
    assert grpo["kept_fraction"] > pcm["kept_fraction"]
    assert sum(pcm["time_split"].values()) == pytest.approx(1.0)
    for run in result["runs"]:
        assert run["step"] == [1, 2] and len(run["evals"]) == 2  # steps 0 and 2
    saved = json.loads((tmp_path / "learning.json").read_text())
    assert saved["algos"].keys() == result["algos"].keys()
    assert (tmp_path / "learning.png").read_bytes()[:4] == b"\x89PNG"
    print_table(result)

    # seeds run as separate jobs merge into one result
    merged = merge_results([result, result], tmp_path / "merged.json")
    assert len(merged["runs"]) == 6 and merged["algos"]["pcm"]["runs"] == 2
    assert (tmp_path / "merged.png").is_file()
