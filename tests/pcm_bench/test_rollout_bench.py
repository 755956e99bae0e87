"""`pcm-bench rollout`: both env backends collect the same rollouts, side by side."""

from __future__ import annotations

import pytest

from pcm_bench.rollout import RolloutBenchConfig, run_rollout_bench


def test_both_backends_run_the_same_rollouts() -> None:
    config = RolloutBenchConfig(env="metaworld:reach-v3", init_states=1, group_size=3, calls=2,
                                num_workers=1, max_steps=16)
    result = run_rollout_bench(config, log=lambda _line: None)
    workers, gym = result["rows"]
    assert (workers["backend"], gym["backend"]) == ("workers", "gymnasium")
    # one worker process holds the 3 envs; gymnasium runs a process per env
    assert (workers["processes"], gym["processes"]) == (1, 3)
    assert workers["rss_mib"] > 0 and gym["rss_mib"] > 0
    for a, b in zip(workers["calls"], gym["calls"], strict=True):
        assert a["env_steps"] == b["env_steps"] == 3 * 16  # same seeds, same episodes
        assert a["wall_s"] > 0 and b["wall_s"] > 0
    assert workers["wall_vs_first"] == 1.0


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="--backends"):
        RolloutBenchConfig(backends="workers,threads")
