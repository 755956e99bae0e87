"""`pcm-bench replay` at toy sizes (the real update path on reach-v3), and its per-phase score on
planted log-probabilities."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pcm_bench.cli import app
from pcm_bench.replay import (
    EvalSet,
    ReplayConfig,
    _load_trajectories,
    _save_trajectories,
    run_replay_bench,
    score_runs,
)
from pcm_bench.study import RUNS_FILE, StudyError
from tests.fixtures.training import MAX_STEPS, TASK, tiny_rl_config
from trainer_client.train.rl import train_rl
from trainer_client.types import OBS_STATE, Trajectory


def _bench(out: Path, init: Path, **kw: object) -> dict:
    args: dict = dict(out=out, init=init, env=TASK, seeds=1, train_batches=2, eval_batches=2,
                      at="1", init_states=2, group_size=4, eval_episodes=3, num_workers=0,
                      threads=1, rl_overrides={"max_steps": MAX_STEPS})
    args.update(kw)
    return run_replay_bench(ReplayConfig(**args), log=lambda _m: None)


def _score(run: Path, init: Path, out: Path, log: Callable[[str], None], **kw: Any) -> dict:
    """`pcm-bench replay --runs RUN` at toy sizes."""
    return score_runs(ReplayConfig(init=init, runs=str(run), env=TASK, eval_batches=2,
                                   init_states=2, group_size=4, out=out, num_workers=0, **kw),
                      log=log)


def test_replay_runs_the_real_updates_and_resumes(sft_checkpoint: Path, tmp_path: Path) -> None:
    result = _bench(tmp_path, sft_checkpoint)
    assert result["complete"] and {(r["algo"], r["seed"]) for r in result["runs"]} == {
        ("grpo", 0), ("pcm", 0), ("random", 0)}
    for run in result["runs"]:
        assert set(run["at"]) == {"1", "2"}  # --at 1 and the last update
        for scored in run["at"].values():
            # the phases split the surrogate's gain exactly
            assert sum(scored["dJ_phase"]) == pytest.approx(scored["dJ"])
            assert sum(scored["dL_phase"]) == pytest.approx(scored["dL"])
            assert len(scored["dJ_batches"]) == 2 and scored["dJ_se"] is not None
            assert max(scored["move_phase"]) > 0  # an update moved the policy
        assert [u["step"] for u in run["updates"]] == [1, 2]
    kept = {r["algo"]: np.mean([u["kept_fraction"] for u in r["updates"]])
            for r in result["runs"]}
    assert kept["grpo"] == 1.0 and kept["pcm"] < 0.5 and kept["random"] < 0.5
    # paired: one held-out start per seed, the same batches for every algorithm
    assert len({r["heldout_start"] for r in result["runs"]}) == 1
    summary = result["summary"]
    assert summary["random"]["at"]["1"]["dJ_vs_random"] == 0.0
    pcm = summary["pcm"]
    by = {r["algo"]: r for r in result["runs"]}
    assert pcm["at"]["2"]["dJ_vs_grpo"] == pytest.approx(
        by["pcm"]["at"]["2"]["dJ"] - by["grpo"]["at"]["2"]["dJ"])
    assert pcm["budget_share"] is not None and summary["random"]["budget_share"] is None
    cached = sorted(p.name for p in next(tmp_path.glob("cache-*")).iterdir())
    assert cached == ["s0-eval000.npz", "s0-eval001.npz", "s0-train000.npz", "s0-train001.npz"]

    # the same command again runs nothing; --summarize-only rewrites the figures
    lines = (tmp_path / RUNS_FILE).read_text().count("\n")
    again = _bench(tmp_path, sft_checkpoint, summarize_only=True)
    assert again["summary"] == summary
    assert (tmp_path / RUNS_FILE).read_text().count("\n") == lines
    assert json.loads((tmp_path / "replay.json").read_text())["summary"]["pcm"]["seeds"] == [0]
    with pytest.raises(StudyError, match="another configuration"):
        _bench(tmp_path, sft_checkpoint, keep_fraction=0.5)
    with pytest.raises(StudyError, match="nothing to summarize"):
        _bench(tmp_path / "empty", sft_checkpoint, summarize_only=True)


def test_runs_are_scored_checkpoint_by_checkpoint(sft_checkpoint: Path, tmp_path: Path) -> None:
    run = tmp_path / "pcm-run"
    train_rl(tiny_rl_config(run, sft_checkpoint, algo="pcm", steps=2, checkpoint_every=1,
                            keep_checkpoints=2, eval_every=1, eval_episodes=3),
             log_line=lambda _line: None)
    logged: list[str] = []
    scored = _score(run, sft_checkpoint, tmp_path / "score", logged.append,
                    heldout_episodes=3, heldout_seed=0, max_steps=MAX_STEPS)
    (result,) = scored["runs"]
    assert result["algo"] == "pcm" and result["heldout_start"] is not None
    assert [c["step"] for c in result["checkpoints"]] == [1, 2]
    # --heldout-episodes replays the run's own evaluation: the same success at every step
    assert scored["start"]["success"] == result["heldout_start"]
    assert not [m for m in logged if "warning" in m]
    for c in result["checkpoints"]:
        assert sum(c["dJ_phase"]) == pytest.approx(c["dJ"])
        assert c["heldout"] is not None  # the run's own evaluation at that step
        assert c["behaviour"]["success"] == c["heldout"]
        assert len(c["keep_probs_mean"]) == scored["config"]["phases"]
        # the window's keep rate relative to random's spends the same budget
        shares = np.asarray(scored["phases"]["chunks"])
        assert float(shares @ np.asarray(c["keep_rate_window"])) == pytest.approx(1.0)
        assert max(c["move_phase"]) > 0
        # reach-v3 reports no env phases: no funnel, the mean shift over all chunks only
        b = c["behaviour"]
        assert b["funnel"] is None
        for shift in (b["shift_own"], b["shift_ref"]):
            assert shift["arm_rms_all"] > 0 and 0 <= shift["flip_all"] <= 1
            assert shift["chunks"] == [0.0, 0.0, 0.0]
    # the start against itself: no shift
    assert scored["start"]["shift_own"]["arm_rms_all"] == 0.0
    # another seed is not the run's evaluation, and says so
    other = _score(run, sft_checkpoint, tmp_path / "score", logged.append,
                   heldout_episodes=3, heldout_seed=1, max_steps=MAX_STEPS)
    if any(c["behaviour"]["success"] != c["heldout"] for c in other["runs"][0]["checkpoints"]):
        assert [m for m in logged if "warning" in m]
    with pytest.raises(StudyError, match="no step checkpoint"):
        _score(tmp_path / "score", sft_checkpoint, tmp_path / "score", lambda _m: None)


def _trajectory(group: str, success: bool, phases: list[int], row0: int) -> Trajectory:
    c = len(phases)
    actions = np.zeros((c, 1, 1), np.float32)
    actions[:, 0, 0] = np.arange(row0, row0 + c)  # each chunk's action holds its row id
    return Trajectory(task_id="t", group_id=group, instruction="", obs={OBS_STATE: np.zeros(
        (c, 2), np.float32)}, actions=actions, old_logp=np.zeros(c, np.float32),
        phase_ids=np.asarray(phases, np.int64), success=success, num_steps=c)


class _PlantedPolicy:
    """log pi(a | o) = shift[row id in a]: a policy known row by row."""

    obs_keys = (OBS_STATE,)

    def __init__(self, shift: np.ndarray) -> None:
        self.shift = shift

    def log_prob(self, obs: dict, instructions: list[str], actions: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(self.shift[actions[:, 0, 0].astype(int)])


def test_eval_score_is_the_surrogate_gain_per_phase() -> None:
    # one group, one success (A = +1.5 / sqrt(.75)...: group_advantages decides) and three
    # failures; plus an all-failure group whose chunks are uninformative
    trajs = [_trajectory("g", True, [0, 1], 0), _trajectory("g", False, [0, 1, 1], 2),
             _trajectory("g", False, [0, 0], 5), _trajectory("g", False, [1], 7)]
    dead = [_trajectory("h", False, [0, 1], 8), _trajectory("h", False, [1], 10)]
    evalset = EvalSet([trajs, dead], num_phases=3)
    rows = 11
    evalset.logp0 = evalset.log_probs(_PlantedPolicy(np.zeros(rows)))
    same = evalset.score(_PlantedPolicy(np.zeros(rows)))
    assert same["dJ"] == 0.0 and same["move_phase"] == [0.0, 0.0, 0.0]
    # the policy moves on phase-1 chunks only: rho = 1.5 there
    shift = np.zeros(rows)
    phase = evalset.phase
    shift[phase == 1] = np.log(1.5)
    moved = evalset.score(_PlantedPolicy(shift))
    adv = evalset.adv
    informative = adv != 0
    assert informative.sum() == 8  # the first group's chunks only
    expected = float(np.sum(adv[informative & (phase == 1)] * 0.5) / 8)
    assert moved["dJ_phase"] == pytest.approx([0.0, expected, 0.0])
    assert moved["dJ"] == pytest.approx(expected)
    # its log-space term is a within-group contrast: a shift shared by a group's chunks of a
    # phase (what any move away from pi_0 does on average) contributes nothing
    assert moved["dL_phase"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)
    # the success's actions (rows 0-1: phases 0 and 1) made likelier: a positive contrast
    favoured = np.zeros(rows)
    favoured[[0, 1]] = np.log(1.5)
    scored = evalset.score(_PlantedPolicy(favoured))
    expected = []
    for p in range(3):  # by hand: centre within group g's chunks of phase p (all informative)
        in_p = informative & (phase == p)
        centred = favoured[in_p] - favoured[in_p].mean() if in_p.any() else favoured[in_p]
        expected.append(float(np.sum(adv[in_p] * centred) / 8))
    assert scored["dL_phase"] == pytest.approx(expected)
    assert scored["dL"] == pytest.approx(sum(expected)) and scored["dL"] > 0
    assert moved["move_phase"] == pytest.approx([0.0, np.log(1.5), 0.0])  # empty phase 2: 0
    assert moved["dJ_batches"][1] == 0.0  # the all-failure batch carries no signal
    assert evalset.phase_shares()["informative_chunks"][2] == 0.0


def test_trajectories_round_trip_through_the_cache(tmp_path: Path) -> None:
    t = _trajectory("g", True, [0, 1], 0)
    t.head_grad = np.ones((2, 3), np.float32)
    _save_trajectories(tmp_path / "b.npz", [t])
    (back,) = _load_trajectories(tmp_path / "b.npz")
    assert back.group_id == "g" and back.success and back.gripper is None
    np.testing.assert_array_equal(back.obs[OBS_STATE], t.obs[OBS_STATE])
    np.testing.assert_array_equal(back.head_grad, t.head_grad)
    np.testing.assert_array_equal(back.phase_ids, t.phase_ids)


def test_cli_rejects_bad_options(tmp_path: Path) -> None:
    ckpt = tmp_path / "x.pt"
    ckpt.write_bytes(b"")
    r = CliRunner().invoke(app, ["replay", "--init", str(ckpt), "--algos", "grpo,ppo"])
    assert r.exit_code == 2 and "--algos" in r.output
    r = CliRunner().invoke(app, ["replay", "--init", str(ckpt), "--at", "1,x"])
    assert r.exit_code == 2 and "--at" in r.output
    r = CliRunner().invoke(app, ["replay", "--init", str(ckpt), "--runs", str(tmp_path),
                                 "--heldout-episodes", "-1"])
    assert r.exit_code == 2 and "--heldout-episodes" in r.output
