"""`pcm-bench learning` at toy sizes: paired runs, resumable study, the JSON figures and the PNG."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pcm_bench.cli import app
from pcm_bench.learning import (
    ALGOS,
    LearningConfig,
    _interpolated_equal_time,
    mean_ci95,
    print_table,
    run_learning_bench,
    summarize_runs,
)
from pcm_bench.study import RUNS_FILE, StudyError, load_runs
from pcm_contract.run_config import RunConfigSchema
from tests.fixtures.training import MAX_STEPS, TASK
from trainer_client.cli_options import build
from trainer_client.train.config import TrainConfig

SUMMARY_FIELDS = {"seeds", "heldout_start", "heldout_end", "gain_mean", "gain_ci95",
                  "s_per_step", "backward_share"}


def _bench(out: Path, init: Path, **kw: object) -> dict:
    args: dict = dict(out=out, init=init, env=TASK, steps=2, init_states=4, group_size=4,
                      eval_episodes=3, num_workers=0, threads=1,
                      rl_overrides={"max_steps": MAX_STEPS})
    args.update(kw)
    return run_learning_bench(LearningConfig(**args), log=lambda _m: None)


def test_learning_bench_is_paired_resumable_and_writes_figures(sft_checkpoint: Path,
                                                               tmp_path: Path) -> None:
    first = _bench(tmp_path, sft_checkpoint, seeds=1)
    assert first["complete"] and len(first["runs"]) == 3
    assert set(first["summary"]) == {"grpo", "pcm", "random"}
    for a in first["summary"].values():
        assert set(a) >= SUMMARY_FIELDS
        assert a["gain_ci95"] is None  # one seed: no interval
        assert a["rollout_share"] + a["select_share"] + a["backward_share"] == pytest.approx(1)
        assert a["grad_norm_median"] > 0  # the update's gradient norm before clipping
    grpo, pcm = first["summary"]["grpo"], first["summary"]["pcm"]
    assert grpo["backward_speedup_vs_grpo"] == pytest.approx(1.0)
    assert grpo["kept_fraction"] > pcm["kept_fraction"]
    assert grpo["gain_vs_grpo_mean"] == 0.0
    for run in first["runs"]:
        assert run["step"] == [1, 2]
        assert [e["step"] for e in run["evals"]] == [0, 1, 2]  # start, middle, end
        assert run["gain"] == run["heldout_end"] - run["heldout_start"]
    # paired: the same checkpoint, held-out states and evaluation seed give the same start
    assert len({r["heldout_start"] for r in first["runs"]}) == 1

    # a budget that cannot fit the next run stops before it, and the study is incomplete
    stopped = _bench(tmp_path, sft_checkpoint, seeds=2, budget_s=0.01)
    assert len(stopped["runs"]) == 3 and not stopped["complete"]
    # --summarize-only starts nothing and rewrites the figures of the finished runs
    (tmp_path / "learning.json").unlink()
    lines_before = (tmp_path / RUNS_FILE).read_text().count("\n")
    summary = _bench(tmp_path, sft_checkpoint, seeds=2, summarize_only=True)
    assert len(summary["runs"]) == 3 and not summary["complete"]
    assert (tmp_path / RUNS_FILE).read_text().count("\n") == lines_before
    assert json.loads((tmp_path / "learning.json").read_text())["summary"] == summary["summary"]
    with pytest.raises(ValueError, match="nothing to summarize"):
        _bench(tmp_path / "empty", sft_checkpoint, summarize_only=True)
    assert not (tmp_path / "empty").exists()  # nothing written where nothing was
    # the same command continues: only seed 1 runs, seed 0 is not repeated
    lines_before = (tmp_path / RUNS_FILE).read_text().count("\n")
    full = _bench(tmp_path, sft_checkpoint, seeds=2)
    assert full["complete"] and len(full["runs"]) == 6
    assert (tmp_path / RUNS_FILE).read_text().count("\n") == lines_before + 3
    assert {(r["algo"], r["seed"]) for r in load_runs(tmp_path)} == {
        (a, s) for a in ("grpo", "pcm", "random") for s in (0, 1)}
    # two seeds: intervals, and the paired difference is the mean of per-seed differences
    pcm = full["summary"]["pcm"]
    assert pcm["seeds"] == [0, 1] and pcm["gain_ci95"] is not None
    by = {(r["algo"], r["seed"]): r["gain"] for r in full["runs"]}
    assert pcm["gain_vs_grpo_mean"] == pytest.approx(
        np.mean([by["pcm", s] - by["grpo", s] for s in (0, 1)]))
    saved = json.loads((tmp_path / "learning.json").read_text())
    assert saved["summary"].keys() == full["summary"].keys() and saved["task"] == TASK
    assert (tmp_path / "learning.png").read_bytes()[:4] == b"\x89PNG"
    assert saved["summary"]["pcm"]["halves"]["first_half"]["vs_grpo_ci95"] is not None
    print_table(full)

    # another configuration in the same study dir is refused, naming what to do
    with pytest.raises(ValueError, match="another configuration"):
        _bench(tmp_path, sft_checkpoint, seeds=1, keep_fraction=0.5)


def test_mean_ci95_is_the_student_t_interval() -> None:
    mean, ci = mean_ci95([0.1, 0.3])
    # t_{0.975, 1} = 12.706; sd = 0.1414; half width = 12.706 * 0.1414 / sqrt(2) = 1.2706
    assert mean == pytest.approx(0.2)
    assert ci == pytest.approx([0.2 - 1.27062, 0.2 + 1.27062], abs=1e-4)
    assert mean_ci95([0.5]) == (0.5, None)


def _record(algo: str, seed: int, start: float, mid: float, end: float) -> dict:
    """A finished run's record with planted held-out figures (two steps, fixed timings)."""
    return {"algo": algo, "seed": seed, "step": [1, 2], "success_rate": [0.0, 1.0],
            "wall_s": [1.0, 2.0], "rollout_s": [0.5, 0.5], "select_s": [0.0, 0.0],
            "backward_s": [0.5, 0.5], "grad_norm": [1.0, 1.0],
            "summary": {"kept_fraction": 1.0 if algo == "grpo" else 0.2},
            "heldout_start": start, "heldout_mid": mid, "heldout_end": end, "gain": end - start}


def test_halves_are_paired_per_seed_changes() -> None:
    # planted: pcm dips in the first half and recovers in the second, on both seeds
    runs = [_record("grpo", 0, 0.2, 0.5, 0.6), _record("grpo", 1, 0.3, 0.5, 0.6),
            _record("random", 0, 0.2, 0.4, 0.5), _record("random", 1, 0.3, 0.4, 0.6),
            _record("pcm", 0, 0.2, 0.1, 0.5), _record("pcm", 1, 0.3, 0.2, 0.4)]
    pcm = summarize_runs(runs)["pcm"]["halves"]
    first, second = pcm["first_half"], pcm["second_half"]
    assert first["change_mean"] == pytest.approx(-0.1)  # (-0.1 - 0.1) / 2
    assert first["vs_grpo_mean"] == pytest.approx(-0.35)  # (-0.1 - 0.3, -0.1 - 0.2) / 2
    assert first["vs_random_mean"] == pytest.approx(-0.25)  # (-0.3, -0.2)
    # the interval is the t interval of the per-seed differences, not of the two changes
    assert first["vs_random_ci95"] == pytest.approx(mean_ci95([-0.3, -0.2])[1])
    assert second["change_mean"] == pytest.approx(0.3)  # (0.4 + 0.2) / 2
    assert second["vs_grpo_mean"] == pytest.approx(0.2)  # (0.4 - 0.1, 0.2 - 0.1)
    assert second["vs_random_mean"] == pytest.approx(0.15)  # (0.4 - 0.1, 0.2 - 0.2)
    # the halves add up to the gain, per seed and so in the mean
    summary = summarize_runs(runs)
    for a in summary.values():
        h = a["halves"]
        assert h["first_half"]["change_mean"] + h["second_half"]["change_mean"] == \
            pytest.approx(a["gain_mean"])
    grpo = summary["grpo"]["halves"]["first_half"]
    # grpo 0.3, 0.2 against random 0.2, 0.1
    assert grpo["vs_grpo_mean"] == 0.0 and grpo["vs_random_mean"] == pytest.approx(0.1)


def test_cli_rejects_unknown_algo(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["learning", "--algos", "grpo,ppo", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--algos" in r.output and "ppo" in r.output


def test_cli_summarize_only_without_runs_names_the_problem(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["learning", "--summarize-only", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "nothing to summarize" in r.output
    assert not (tmp_path / "learning.json").exists()


def test_equal_time_continues_masked_runs_to_grpos_modelled_time(sft_checkpoint: Path,
                                                                 tmp_path: Path) -> None:
    # a planted model where a kept chunk costs far more than an env step: the masked runs keep
    # fewer chunks per step, so their modelled step is shorter and they run past `steps`
    model = {"c_env": 1e-6, "c_rollout0": 0.0, "c_row": 1.0, "c_update0": 0.0}
    (tmp_path / "model.json").write_text(json.dumps({"model": model}))
    result = _bench(tmp_path, sft_checkpoint, seeds=1, algos="pcm,random,grpo",
                    time_model=tmp_path / "model.json",
                    rl_overrides={"max_steps": MAX_STEPS, "min_keep_fraction": 0.1})
    runs = {r["algo"]: r for r in result["runs"]}
    grpo, pcm, random = runs["grpo"], runs["pcm"], runs["random"]
    t_grpo = sum(1e-6 * e + k for e, k in zip(grpo["env_steps"], grpo["kept_chunks"],
                                             strict=True))
    for run in (pcm, random):
        et = run["equal_time"]
        assert run["step"] == [1, 2]  # the per-step series stop at `steps`
        assert et["step"] == 2 + len(run["extension"]["step"]) and et["step"] > 2
        assert et["grpo_model_s"] == pytest.approx(t_grpo)
        assert et["model_ratio"] >= 1.0  # evaluated once grpo's modelled time is reached
        assert et["heldout"] is not None and not et["interpolated"]
        # the evaluation at `steps` is the per-step comparison's end, not the equal-time one
        assert run["heldout_end"] == run["evals"][-1]["success_rate"]
        assert run["evals"][-1]["step"] == 2
    # random replays pcm's per-step kept fractions (within a trajectory's rounding)
    pcm_fractions = pcm["kept_fraction"] + pcm["extension"]["kept_fraction"]
    for mine, theirs in zip(random["kept_fraction"], pcm_fractions, strict=False):
        assert mine == pytest.approx(theirs, abs=0.1)
    summary = result["summary"]
    assert summary["grpo"]["equal_time"]["heldout_end"] == grpo["heldout_end"]
    for algo in ("pcm", "random"):
        et = summary[algo]["equal_time"]
        assert et["heldout_end"] == runs[algo]["equal_time"]["heldout"]
        assert et["minus_grpo_mean"] == pytest.approx(
            runs[algo]["equal_time"]["heldout"] - runs[algo]["heldout_start"] - grpo["gain"])
        assert 0 < summary[algo]["backward_fraction"] < 1
    assert summary["grpo"]["backward_fraction"] == 1.0
    # the keep weights' step-to-step change, where they choose the chunks
    assert summary["grpo"]["keep_weight_change"] is None
    assert summary["random"]["keep_weight_change"] is None
    assert 0 <= summary["pcm"]["keep_weight_change"]["median"] <= 1
    print_table(result)


def test_interpolated_equal_time_lies_between_evaluations() -> None:
    record = {"evals": [{"step": 0, "success_rate": 0.2}, {"step": 1, "success_rate": 0.4},
                        {"step": 2, "success_rate": 0.6}]}
    et = _interpolated_equal_time(record, np.array([10.0, 20.0]), 15.0)
    assert et["heldout"] == pytest.approx(0.5) and et["interpolated"] and et["step"] == 2


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_every_study_algo_is_a_valid_training_config(algo: str) -> None:
    cfg = build(TrainConfig, dict(env=TASK, **ALGOS[algo]))
    assert cfg.algo == ALGOS[algo]["algo"]
    for name, value in ALGOS[algo].items():
        if name in {f.name for f in fields(RunConfigSchema)}:
            assert getattr(cfg.selection, name) == value, name


def test_paper_algo_is_the_papers_selection() -> None:
    sel = build(TrainConfig, dict(env=TASK, **ALGOS["pcm-paper"])).selection
    assert (sel.keep_rule, sel.score, sel.score_window, sel.budget_rule, sel.phases) == (
        "paper", "action", 5, "fixed", 5)


def test_the_study_algos_build_what_they_name() -> None:
    from pcm_bench.learning import ALGOS, RANDOM_PACED_BY
    from trainer_client.cli_options import build
    from trainer_client.train.config import TrainConfig

    selection = {name: build(TrainConfig, opts).selection for name, opts in ALGOS.items()}
    assert selection["pcm"].phase_weighting == "wiener"  # the default: what pcm-train runs
    assert selection["pcm"] == build(TrainConfig, {}).selection
    assert selection["pcm-ht"].phase_weighting == "none"
    assert selection["pcm-ht"].budget_rule == selection["pcm"].budget_rule == "auto"
    assert selection["pcm-e0.8"].target_efficiency == 0.8 > selection["pcm"].target_efficiency
    assert (selection["pcm-rate"].budget_objective, selection["pcm"].budget_objective) == (
        "rate", "efficiency")
    # each random is paced by a pcm run that exists among the algos
    for random, pcm in RANDOM_PACED_BY.items():
        assert selection[random].mode == "random" and selection[pcm].mode == "pcm"


def test_each_pcm_is_compared_with_the_random_at_its_own_budget() -> None:
    from pcm_bench.learning import random_for

    runs = [_record("grpo", 0, 0.2, 0.1, 0.5), _record("pcm", 0, 0.2, 0.1, 0.4),
            _record("random", 0, 0.2, 0.1, 0.3), _record("pcm-ht", 0, 0.2, 0.1, 0.45),
            _record("random-ht", 0, 0.2, 0.1, 0.25), _record("pcm-action", 0, 0.2, 0.1, 0.2)]
    assert (random_for("pcm"), random_for("pcm-ht"), random_for("pcm-action")) == (
        "random", "random-ht", "random")
    summary = summarize_runs(runs)
    gain = {r["algo"]: r["gain"] for r in runs}
    for algo, random in (("pcm", "random"), ("pcm-ht", "random-ht"), ("pcm-action", "random")):
        assert summary[algo]["gain_vs_random_mean"] == pytest.approx(gain[algo] - gain[random])


def test_steps_that_kept_nothing_pace_random_at_the_last_chosen_fraction() -> None:
    from pcm_bench.learning import _kept_series

    run = {"algo": "pcm", "seed": 0, "kept_fraction": [0.0, 0.3, 0.0, 0.0, 0.5],
           "extension": {"kept_fraction": [0.0, 0.2]}}
    assert _kept_series(run) == [0.3, 0.3, 0.3, 0.3, 0.5, 0.5, 0.2]
    with pytest.raises(StudyError, match="kept no chunk"):
        _kept_series({"algo": "pcm", "seed": 1, "kept_fraction": [0.0, 0.0]})


def test_a_run_without_its_equal_time_evaluation_is_not_finished() -> None:
    """The study tops up (and evaluates) a continuation that stopped short of grpo's modelled
    time or has no evaluation there; an interpolated one or one with its evaluation is done."""
    from pcm_bench.learning import _short_of_equal_time

    def et(**kw: object) -> dict[str, object]:
        return {"equal_time": {"interpolated": False, "model_ratio": 1.004, "heldout": 0.9, **kw}}

    assert not _short_of_equal_time({"algo": "grpo"})
    assert not _short_of_equal_time(et())
    assert _short_of_equal_time(et(model_ratio=0.97))
    assert _short_of_equal_time(et(heldout=None))
    assert not _short_of_equal_time(et(interpolated=True, model_ratio=None))
