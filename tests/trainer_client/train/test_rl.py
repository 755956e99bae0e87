"""`pcm-train rl` with the embedded selector: metrics, checkpoints, the PNG, resume, algos and
idempotent request ids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.fixtures.training import tiny_rl_config
from trainer_client.clients import connect
from trainer_client.train.checkpoint import list_checkpoints, load_checkpoint
from trainer_client.train.distributed import Dist
from trainer_client.train.metrics import read_metrics
from trainer_client.train.model import load_policy, param_digest, param_vector
from trainer_client.train.rl import step_init_states, train_rl
from trainer_client.train.selection import select, select_global, selector_inputs

STEP_FIELDS = {
    "step",
    "success_rate",
    "kept_fraction",
    "kept_chunks",
    "informative_chunks",
    "total_chunks",
    "trajectories",
    "informative_trajectories",
    "skipped_trajectories",
    "loss",
    "grad_norm",
    "rollout_s",
    "select_s",
    "backward_s",
    "step_s",
    "wall_s",
    "keep_probs",
    "selection_id",
    "env_steps",
    "log_std",
}


def _steps(out: Path) -> list[dict]:
    return [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "step"]


@pytest.fixture(scope="module")
def pcm_run(tmp_path_factory: pytest.TempPathFactory, sft_checkpoint: Path) -> Path:
    out = tmp_path_factory.mktemp("rl_pcm")
    with (out / "log.txt").open("w") as f:
        train_rl(tiny_rl_config(out, sft_checkpoint, algo="pcm"),
                 log_line=lambda line: f.write(line + "\n"))
    return out


def test_two_steps_write_metrics_checkpoints_and_png(pcm_run: Path, sft_checkpoint: Path) -> None:
    rows = _steps(pcm_run)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert set(r) >= STEP_FIELDS
        assert r["trajectories"] == 16 and len(r["keep_probs"]) == 4
        assert sum(r["keep_probs"]) == pytest.approx(1.0)
        assert min(r["rollout_s"], r["select_s"], r["backward_s"]) >= 0
    # the batch had mixed groups, so the adaptive budget kept between its floor and everything
    informative = [r for r in rows if r["informative_chunks"]]
    assert informative, "expected some groups with mixed outcomes"
    for r in informative:
        assert 0.1 <= r["kept_fraction"] <= 1.0
    assert [s for s, _ in list_checkpoints(pcm_run)] == [1, 2]
    assert (pcm_run / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((pcm_run / "summary.json").read_text())
    assert summary["steps"] == 2 and set(summary["time_split"]) == {"rollout", "select", "backward"}
    # the policy moved away from the SFT checkpoint
    final = load_policy(pcm_run / "final.pt")
    assert not torch.equal(param_vector(final), param_vector(load_policy(sft_checkpoint)))
    ckpt = load_checkpoint(list_checkpoints(pcm_run)[-1][1])
    assert ckpt["step"] == 2 and ckpt["optimizer"]["state"] and ckpt["config"]["token"] is None
    # --segmenter auto chose on the first batch, said so, and the checkpoint keeps the choice
    (line,) = [x for x in (pcm_run / "log.txt").read_text().splitlines()
               if x.startswith("segmenter auto: ")]
    assert ckpt["config"]["segmenter_used"] == line.split()[2]
    assert ckpt["config"]["segmenter_used"] in ("gripper", "progress")


def test_resume_continues_from_the_latest_checkpoint(
    pcm_run: Path, sft_checkpoint: Path, tmp_path: Path
) -> None:
    lines: list[str] = []
    out = tmp_path / "resumed"
    import shutil

    shutil.copytree(pcm_run, out)
    train_rl(
        tiny_rl_config(out, sft_checkpoint, algo="pcm", steps=3, resume=True), log_line=lines.append
    )
    assert any("resuming" in line and "step 2" in line for line in lines)
    assert not any(line.startswith("segmenter auto") for line in lines)  # kept from step 1
    assert [r["step"] for r in _steps(out)] == [1, 2, 3]
    assert [s for s, _ in list_checkpoints(out)] == [2, 3]  # keep_checkpoints=2


def test_resume_runs_the_evaluation_a_stopped_run_missed(
    sft_checkpoint: Path, tmp_path: Path
) -> None:
    """A run stopped after its last checkpoint and before that step's held-out evaluation (its
    metrics end without the eval row), resumed at that step, evaluates there; resumed again,
    it does not evaluate twice."""
    out = tmp_path / "run"
    cfg = tiny_rl_config(out, sft_checkpoint, algo="grpo", steps=2, eval_every=2,
                         eval_episodes=2)
    train_rl(cfg, log_line=lambda _l: None)
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows if r.get("kind") == "eval"] == [0, 2]
    (out / "metrics.jsonl").write_text("".join(
        json.dumps(r) + "\n" for r in rows if not (r.get("kind") == "eval" and r["step"] == 2)))
    said: list[list[str]] = []
    for _ in range(2):
        said.append([])
        train_rl(tiny_rl_config(out, sft_checkpoint, algo="grpo", steps=2, eval_every=2,
                                eval_episodes=2, resume=True), log_line=said[-1].append)
        evals = [r for r in read_metrics(out / "metrics.jsonl") if r.get("kind") == "eval"]
        assert [r["step"] for r in evals] == [0, 2]
    evaluated = [[x for x in lines if x.startswith("eval step")] for lines in said]
    assert len(evaluated[0]) == 1 and evaluated[0][0].startswith("eval step 2:")
    assert evaluated[1] == []  # resumed again: nothing missing, nothing evaluated twice


def test_resume_replays_exactly_what_an_uninterrupted_run_does(
    sft_checkpoint: Path, tmp_path: Path
) -> None:
    """grpo keeps every chunk (no selector state), so a run stopped after step 1 and resumed
    must end bitwise where the uninterrupted run ends: optimizer state, step and sampling seeds
    all come back."""
    full = tmp_path / "full"
    train_rl(tiny_rl_config(full, sft_checkpoint, algo="grpo", steps=2), log_line=lambda _l: None)
    part = tmp_path / "part"
    train_rl(tiny_rl_config(part, sft_checkpoint, algo="grpo", steps=1), log_line=lambda _l: None)
    train_rl(
        tiny_rl_config(part, sft_checkpoint, algo="grpo", steps=2, resume=True),
        log_line=lambda _l: None,
    )
    assert param_digest(load_policy(full / "final.pt")) == param_digest(
        load_policy(part / "final.pt")
    )
    a, b = _steps(full), _steps(part)
    assert [r["success_rate"] for r in a] == [r["success_rate"] for r in b]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b])


def test_resume_restores_the_embedded_selectors_state(
    sft_checkpoint: Path, tmp_path: Path
) -> None:
    """The in-process selector dies with the process; its run state rides in the checkpoint,
    so a pcm run stopped after step 1 and resumed selects at step 2 from the same state as the
    uninterrupted run, and ends bitwise where it ends."""
    full = tmp_path / "full"
    train_rl(tiny_rl_config(full, sft_checkpoint, algo="pcm", steps=2), log_line=lambda _l: None)
    part = tmp_path / "part"
    train_rl(tiny_rl_config(part, sft_checkpoint, algo="pcm", steps=1), log_line=lambda _l: None)
    assert load_checkpoint(list_checkpoints(part)[-1][1])["selector_state"]["state_version"] == 1
    lines: list[str] = []
    train_rl(tiny_rl_config(part, sft_checkpoint, algo="pcm", steps=2, resume=True),
             log_line=lines.append)
    assert "embedded selector: run state restored at version 1" in lines
    a, b = _steps(full), _steps(part)
    for key in ("keep_probs", "kept_chunks", "informative_chunks", "success_rate"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b])
    assert param_digest(load_policy(full / "final.pt")) == param_digest(
        load_policy(part / "final.pt"))


@pytest.mark.parametrize("algo", ["grpo", "random"])
def test_algos_keep_what_they_should(algo: str, sft_checkpoint: Path, tmp_path: Path) -> None:
    train_rl(
        tiny_rl_config(tmp_path, sft_checkpoint, algo=algo, steps=1, keep_fraction=0.2,
                       budget_rule="fixed"),
        log_line=lambda _l: None,
    )
    (row,) = _steps(tmp_path)
    assert row["informative_chunks"] > 0
    if algo == "grpo":  # every chunk of every informative trajectory
        assert row["kept_fraction"] == 1.0
    else:
        assert 0.1 <= row["kept_fraction"] <= 0.35


def test_step_init_states_are_deterministic_and_distinct(
    sft_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = tiny_rl_config(tmp_path, sft_checkpoint, init_states=6)
    a, b = step_init_states(cfg, 3, None), step_init_states(cfg, 3, None)
    assert a == b and len(set(a)) == 6 and all(0 <= i < 50_000 for i in a)
    assert step_init_states(cfg, 4, None) != a
    assert all(0 <= i < 50 for i in step_init_states(cfg, 3, 50))


def _fake_trajectories(n_groups: int = 2, g: int = 4, c: int = 5, seed: int = 0) -> list:
    from trainer_client.types import Trajectory

    rng = np.random.default_rng(seed)
    out = []
    for grp in range(n_groups):
        for j in range(g):
            out.append(
                Trajectory(
                    task_id="metaworld:reach-v3",
                    group_id=f"metaworld:reach-v3/init{grp}/step1",
                    instruction="reach",
                    obs={"state": np.zeros((c, 39), np.float32)},
                    actions=rng.standard_normal((c, 8, 4)).astype(np.float32),
                    old_logp=np.zeros(c, np.float32),
                    phase_ids=np.arange(c) % 4,
                    success=bool(j % 2),
                    num_steps=c * 8,
                )
            )
    return out


def test_a_retried_step_replays_the_stored_selection() -> None:
    client = connect("embedded")
    client.put_run("r1", feature_dim=32, keep_fraction=0.4)
    trajs = _fake_trajectories()
    kw: dict[str, Any] = {"request_id": "r1/t/step1", "trainer_id": "t", "step": 1}
    first = select_global(Dist(), client, "r1", trajs, **kw)
    version = client.get_run("r1").state_version
    again = select_global(Dist(), client, "r1", trajs, **kw)
    assert again.selection_id == first.selection_id
    assert client.get_run("r1").state_version == version  # nothing counted twice
    assert all(np.array_equal(a, b) for a, b in zip(first.masks, again.masks, strict=True))
    assert first.informative_chunks == 40 and first.kept_chunks == 8 * 2


def test_a_stored_answer_that_does_not_fit_is_reselected() -> None:
    client = connect("embedded")
    client.put_run("r2", feature_dim=32)
    select(
        client,
        "r2",
        selector_inputs(_fake_trajectories(c=5)),
        request_id="q",
        trainer_id="t",
        step=1,
    )
    entries = selector_inputs(_fake_trajectories(c=7))
    response, used = select(client, "r2", entries, request_id="q", trainer_id="t", step=1)
    assert used == "q.r1" and [m.shape for m in response.masks] == [(7,)] * 8


@pytest.mark.parametrize(("overrides", "words"), [
    ({"phase_weighting": "wiener"},
     "signal score, ht weighting, wiener phase weights, auto phases"),
    ({"score": "action", "score_window": 5, "keep_rule": "paper", "weighting": "mean",
      "budget_rule": "fixed", "segmenter": "paper", "phases": 5, "budget": 3},
     "action score, mean weighting, scores over windows of 5 batches, keep rule paper, "
     "paper phases"),
])
def test_the_log_names_the_selection_rules(tmp_path: Path, sft_checkpoint: Path,
                                           overrides: dict[str, Any], words: str) -> None:
    lines: list[str] = []
    train_rl(tiny_rl_config(tmp_path, sft_checkpoint, algo="pcm", steps=1, **overrides),
             log_line=lines.append)
    assert any(f"pcm: {words};" in line for line in lines), lines[:3]
