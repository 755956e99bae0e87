"""The resumable study behind `pcm-bench learning` and `pcm-bench replay`: runs.jsonl appended per
run (the last record of a run wins), the configuration's fingerprint, and the budget-bounded
order of the runs that a rerun continues."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pcm_bench.study import RUNS_FILE, Study, StudyError, complete, fingerprint, load_runs

CONFIG = {"env": "metaworld:reach-v3", "steps": 2, "keep_fraction": 0.2,
          "eval_steps": [0, 1, 2], "checkpoint": "x.pt"}


def _checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "sft.pt"
    path.write_bytes(b"checkpoint")
    return path


def test_the_fingerprint_is_the_configuration_and_the_checkpoints_bytes(tmp_path: Path) -> None:
    init = _checkpoint(tmp_path)
    # pinned: the studies recorded so far carry this computation's digests
    assert fingerprint(CONFIG, init) == "e3e2e73ebfb9bb2a"
    assert fingerprint(CONFIG, tmp_path / "absent.pt") == "f33c2efc9d924204"
    assert fingerprint({**CONFIG, "steps": 3}, init) != fingerprint(CONFIG, init)
    init.write_bytes(b"another checkpoint")
    assert fingerprint(CONFIG, init) != "e3e2e73ebfb9bb2a"


def _record(algo: str, seed: int, duration_s: float = 1.0, **more: Any) -> dict[str, Any]:
    return {"algo": algo, "seed": seed, "duration_s": duration_s, **more}


def test_a_rerun_continues_and_the_last_record_of_a_run_wins(tmp_path: Path) -> None:
    init = _checkpoint(tmp_path)
    study = Study.open(tmp_path, CONFIG, init)
    assert list(study.pending(["grpo", "pcm"], range(2))) == [
        (0, "grpo"), (0, "pcm"), (1, "grpo"), (1, "pcm")]  # seed-major
    study.append(_record("grpo", 0, note="first"))
    study.append(_record("pcm", 0))
    study.append(_record("grpo", 0, note="again"))
    lines = (tmp_path / RUNS_FILE).read_text().splitlines()
    assert len(lines) == 3
    assert json.loads(lines[0])["fingerprint"] == fingerprint(CONFIG, init)
    assert json.loads(lines[0])["config"] == CONFIG
    runs = load_runs(tmp_path)
    assert [(r["algo"], r["seed"], r.get("note")) for r in runs] == [
        ("grpo", 0, "again"), ("pcm", 0, None)]
    assert complete(runs, ["grpo", "pcm"], range(1))
    assert not complete(runs, ["grpo", "pcm"], range(2))
    # the same command again: only what is missing
    again = Study.open(tmp_path, CONFIG, init)
    assert list(again.pending(["grpo", "pcm"], range(2))) == [(1, "grpo"), (1, "pcm")]
    # a run recorded but not `finished` (e.g. to be topped up) is pending again
    unfinished = again.pending(["grpo", "pcm"], range(2), finished=lambda r: r["algo"] != "pcm")
    assert list(unfinished) == [(0, "pcm"), (1, "grpo"), (1, "pcm")]


def test_another_configuration_or_nothing_to_summarize_is_refused(tmp_path: Path) -> None:
    init = _checkpoint(tmp_path)
    with pytest.raises(StudyError, match="nothing to summarize"):
        Study.open(tmp_path, CONFIG, init, summarize_only=True)
    Study.open(tmp_path, CONFIG, init).append(_record("grpo", 0))
    Study.open(tmp_path, CONFIG, init, summarize_only=True)  # now it has a run
    with pytest.raises(StudyError, match=r"another configuration.*use another --out"):
        Study.open(tmp_path, {**CONFIG, "keep_fraction": 0.5}, init)


def test_the_budget_stops_before_a_run_that_would_not_fit(tmp_path: Path) -> None:
    init = _checkpoint(tmp_path)
    study = Study.open(tmp_path, CONFIG, init)
    study.append(_record("grpo", 0, duration_s=100.0))
    study.append(_record("pcm", 0, duration_s=10.0))
    logged: list[str] = []
    # 50 s left: pcm (10 s so far) fits, grpo (100 s) does not; an algorithm not run yet always
    # starts
    bounded = Study.open(tmp_path, CONFIG, init, budget_s=50.0)
    pending = bounded.pending(["pcm", "random", "grpo"], range(2), log=logged.append,
                              name="bench")
    assert list(pending) == [(0, "random"), (1, "pcm"), (1, "random")]
    assert logged == ["bench: the budget (50s) would end during grpo seed 1 (~100s); rerun the "
                      "same command to continue"]
    # checked lazily: a run appended meanwhile counts (random's 60 s no longer fits)
    bounded = Study.open(tmp_path, CONFIG, init, budget_s=50.0)
    pending = bounded.pending(["random", "pcm"], range(1, 3), log=logged.append)
    assert next(pending) == (1, "random")
    bounded.append(_record("random", 1, duration_s=60.0))
    assert list(pending) == [(1, "pcm")]
    assert "during random seed 2 (~60s)" in logged[-1]
