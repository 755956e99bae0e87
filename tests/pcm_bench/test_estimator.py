"""`pcm-bench estimator` at toy sizes: the JSON fields, exact facts of the estimators, the cache
and determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pcm_bench.estimator import (
    BatchData,
    Estimator,
    EstimatorConfig,
    SignFoldSketch,
    averaged_alignment,
    cross_batch_signal,
    net_advantage,
    online_convergence,
    plot_estimator,
    run_estimator_bench,
)
from tests.fixtures.training import MAX_STEPS, TASK
from trainer_client.cli_options import build
from trainer_client.types import Trajectory


def _config(init: Path, **values: object) -> EstimatorConfig:
    """The command's config from its flags' values (keep_fraction, phases, eps: the run
    config's)."""
    return build(EstimatorConfig, {"init": init, **values})


PHASE_FIELDS = {"phase", "chunks", "energy", "signal", "share"}
ESTIMATOR_FIELDS = {"name", "score", "weighting", "alignment", "alignment_avg", "cosine",
                    "relative_variance", "max_weight", "net_advantage"}


@pytest.fixture(scope="module")
def bench(sft_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("estimator")
    result = run_estimator_bench(_config(sft_checkpoint, env=TASK, batches=3, init_states=3,
                                 group_size=4, max_steps=MAX_STEPS, sketch_dim=512, draws=6,
                                 num_workers=0, out=out), log=lambda _m: None)
    return result, out


def test_fields_and_exact_facts(bench: tuple[dict, Path]) -> None:
    result, _ = bench
    assert result["task"] == TASK and result["batches"] == 3
    assert result["informative_chunks"] > 0, "the toy policy must give mixed groups"
    assert result["default"] == "pcm signal mean"
    assert [p["phase"] for p in result["phases"]] == [0, 1, 2, 3]
    for p in result["phases"]:
        assert set(p) >= PHASE_FIELDS and p["energy"] >= 0 and 0 <= p["share"] <= 1
    assert sum(p["share"] for p in result["phases"]) == pytest.approx(1.0)
    rows = {r["name"]: r for r in result["estimators"]}
    for name in ("grpo", "random mean", "pcm action mean", "pcm action ht", "pcm signal mean",
                 "pcm signal ht", "oracle mean", result["default"]):
        assert set(rows[name]) >= ESTIMATOR_FIELDS
    # GRPO is the batch gradient itself: cosine 1, no mask variance
    assert rows["grpo"]["cosine"] == pytest.approx(1.0)
    assert rows["grpo"]["relative_variance"] == 0.0
    for r in rows.values():
        assert -1.0 <= r["alignment_avg"] <= 1.0
    # paired differences over the same batches
    assert rows["grpo"]["alignment_vs_grpo"] == 0.0 and rows["grpo"]["alignment_vs_grpo_se"] == 0
    assert rows["random mean"]["alignment_vs_random"] == 0.0
    assert rows["oracle mean"]["alignment_vs_grpo"] == pytest.approx(
        rows["oracle mean"]["alignment"] - rows["grpo"]["alignment"])
    # mean weighting answers weight 1; HT weights are 1/pi >= 1 and exceed 1 when f < 1
    assert rows["pcm signal mean"]["max_weight"] == 1.0
    assert rows["random ht"]["max_weight"] > 1.0
    # the online convergence of the default: positions up to K, weights that sum to 1
    online = result["online"]
    assert online["estimator"] == result["default"] and online["positions"] == [1, 2, 3]
    assert online["signal_top_phase"] == int(np.argmax([p["share"] for p in result["phases"]]))
    for w, frac in zip(online["mean_keep_weights"], online["top_on_signal_phase"], strict=True):
        assert sum(w) == pytest.approx(1.0) and 0.0 <= frac <= 1.0
    for r in rows.values():
        assert -1.0 <= r["net_advantage"] <= 1.0
    # masks at 20% of the chunks are noisier than the full batch
    assert rows["random mean"]["relative_variance"] > 0
    assert rows["random mean"]["cosine"] < 1.0
    # the adaptive budget, and random at the same per-batch budget (its rounding aside)
    auto, matched = rows["auto ht"], rows["random at auto's budget"]
    assert 0.1 <= auto["kept_fraction"] <= 1.0
    assert matched["kept_fraction"] == pytest.approx(auto["kept_fraction"], abs=0.1)
    assert rows["grpo"]["kept_fraction"] == 1.0
    # the same rule with the state of a run that has seen the other batches, unbiased and
    # Wiener-weighted
    for name in ("auto ht carried", "auto wiener carried"):
        assert 0.1 <= rows[name]["kept_fraction"] <= 1.0
        assert -1.0 <= rows[name]["alignment"] <= 1.0
    # the regime: signal + noise is the batch gradient's mean squared norm, per phase too;
    # keeping more chunks uniformly keeps more of GRPO's predicted progress
    reg = result["regime"]
    assert reg["rollouts_per_batch"] == 12
    assert reg["signal"] + reg["noise"] == pytest.approx(
        sum(p["signal"] + p["noise"] for p in reg["phases"]), rel=1.0, abs=np.inf)
    sel = {r["selection"]: r for r in reg["selections"]}
    uniform = [sel[f"uniform {f}"]["efficiency"] for f in (0.1, 0.2, 0.5)]
    assert 0 < uniform[0] < uniform[1] < uniform[2] < 1
    for target in (0.6, 0.7, 0.8):
        auto = sel[f"auto (e* {target})"]
        assert 0.1 <= auto["kept_fraction"] <= 1.0
        assert 0 <= auto["efficiency"] <= 1 and 0 <= auto["rule_efficiency_mean"] <= 1


def test_cache_makes_reruns_identical_and_cheap(bench: tuple[dict, Path],
                                                sft_checkpoint: Path) -> None:
    result, out = bench
    cached = {p: p.stat().st_mtime_ns for p in out.rglob("batch*.npz")}
    assert len(cached) == 3
    lines: list[str] = []
    again = run_estimator_bench(_config(sft_checkpoint, env=TASK, batches=3, init_states=3,
                                group_size=4, max_steps=MAX_STEPS, sketch_dim=512, draws=6,
                                num_workers=0, out=out), log=lines.append)
    assert again["estimators"] == result["estimators"] and again["phases"] == result["phases"]
    # cheap: no rollout and no gradient was computed again (nothing collected, nothing written)
    assert not any("to collect" in line for line in lines)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("batch*.npz")} == cached
    # another segmenter relabels the cached batches
    assert result["config"]["segmenter"] == "gripper"  # the default phases
    progress = run_estimator_bench(_config(sft_checkpoint, env=TASK, batches=3, init_states=3,
                                   group_size=4, max_steps=MAX_STEPS, sketch_dim=512, draws=6,
                                   segmenter="progress", num_workers=0, out=out),
                                   log=lambda _m: None)
    assert progress["config"]["segmenter"] == "progress"
    assert sum(p["chunks"] for p in progress["phases"]) == result["informative_chunks"]
    png = plot_estimator(result, out / "estimator.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    json.dumps(result)  # serialisable as written by --json


def test_regime_noise_scale_of_planted_gradients() -> None:
    """Batches whose per-chunk gradients are mu + noise: the signal is ||mu||^2 and the noise
    scale follows from the planted noise."""
    from pcm_bench.regime import regime

    rng = np.random.default_rng(0)
    k, n, s_dim = 400, 10, 16
    mu = np.zeros(s_dim)
    mu[0] = 1.0
    parts = np.zeros((k, 1, s_dim))
    data = []
    for b in range(k):
        g = mu + rng.normal(0.0, 0.1, size=(n, s_dim))  # G_b = mean: mu + noise
        parts[b, 0] = g.sum(0) / n
        data.append(BatchData(trajectories=[], advantages=np.zeros(0),
                              rows=np.zeros((n, 2), np.int64), grads=g.astype(np.float32)))
    reg = regime(data, [np.zeros(n, np.int64)] * k, parts, rollouts=32, signal_dim=8)
    # E||G_b - mu||^2 = 16 * 0.01 / n = 0.016; signal 1
    assert reg["signal"] == pytest.approx(1.0, rel=0.05)
    assert reg["noise"] == pytest.approx(0.016, rel=0.1)
    assert reg["noise_scale_rollouts"] == pytest.approx(32 * 0.016, rel=0.15)
    uniform = {r["selection"]: r["efficiency"] for r in reg["selections"]}
    # keeping half adds (1/0.5 - 1) * E sum ||g_c||^2 / n^2 = (1 + 0.16) / 10 = 0.116
    assert uniform["uniform 0.5"] == pytest.approx(1.016 / (1.016 + 0.116), rel=0.02)


def test_sign_fold_sketch_preserves_inner_products() -> None:
    torch.manual_seed(0)
    params = [torch.zeros(300, 40), torch.zeros(17)]
    x = [torch.randn(300, 40), torch.randn(17)]
    y = [x[0] + 0.5 * torch.randn(300, 40), torch.randn(17)]
    exact = float(sum((a * b).sum() for a, b in zip(x, y, strict=True)))
    estimates = []
    for seed in range(200):
        sketch = SignFoldSketch(params, 256, seed)
        estimates.append(float(sketch(x) @ sketch(y)))
    # unbiased: the mean over independent sign draws is within 5 standard errors
    se = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - exact) < 5 * se


def test_net_advantage_of_the_kept_set() -> None:
    # one success (A = +1, 2 chunks) and one failure (A = -1, 6 chunks): all 8 rows
    row_adv = np.array([1.0] * 2 + [-1.0] * 6)
    everything = np.full((1, 8), 1 / 8)  # GRPO: the chunk counts' imbalance, (2 - 6) / 8
    assert net_advantage(everything, row_adv) == pytest.approx(-0.5)
    # two draws: a balanced kept set (one chunk of each), then the failure's chunks alone
    draws = np.zeros((2, 8))
    draws[0, [0, 2]] = 0.5
    draws[1, [3, 4]] = 0.5
    assert net_advantage(draws, row_adv) == pytest.approx((0.0 - 1.0) / 2)
    assert net_advantage(np.zeros((1, 8)), row_adv) == 0.0  # nothing kept: no lean


def test_cross_batch_signal_removes_the_noise_term() -> None:
    rng = np.random.default_rng(0)
    mean = np.zeros((2, 64))
    mean[0, :4] = 1.0  # phase 0 has expected part of squared norm 4, phase 1 none
    parts = mean[None] + rng.normal(0, 1.0, size=(400, 2, 64))  # noise norm^2 ~ 64 per draw
    signal = cross_batch_signal(parts)
    assert signal[0] == pytest.approx(4.0, abs=0.5) and abs(signal[1]) < 0.5


def test_averaged_alignment_exposes_bias_that_noise_hides() -> None:
    rng = np.random.default_rng(0)
    k, dim = 20, 400
    s0, s1 = np.zeros(dim), np.zeros(dim)
    s0[:10], s1[10:20] = 1.0, 0.9  # the signal of two phases: |s0|^2 = 10, |s1|^2 = 8.1
    signal = s0 + s1
    # without noise: an estimator that drops phase 1 keeps cos(s0, s0 + s1) of the direction
    full = np.tile(signal, (k, 1))
    biased = np.tile(s0, (k, 1))
    assert averaged_alignment(biased, full, 8, 0) == pytest.approx(
        np.sqrt(10.0 / 18.1))
    assert averaged_alignment(3.0 * full, full, 8, 0) == pytest.approx(1.0)
    # with per-batch noise: the masked mean (unbiased, noisier) wins over the biased one once
    # averaged, though each of its batches aligns worse than the biased one's
    noise = rng.normal(0, 0.15, size=(k, dim))  # |noise|^2 ~ 9 per batch
    full = signal + noise
    unbiased = full + rng.normal(0, 0.25, size=(k, dim))  # a mask's noise on top, ~ 25
    biased = s0 + 0.2 * noise

    def one_batch(est: np.ndarray) -> float:  # the leave-one-batch-out `alignment`
        held_out = [(full.sum(0) - full[b]) / (k - 1) for b in range(k)]
        return float(np.mean([e @ h / np.linalg.norm(e) / np.linalg.norm(h)
                              for e, h in zip(est, held_out, strict=True)]))

    assert one_batch(unbiased) < one_batch(biased) - 0.05
    assert averaged_alignment(unbiased, full, 64, 0) > averaged_alignment(biased, full, 64, 0)
    # the same splits for every estimator: here, GRPO's own figure is above the noisier one's
    assert averaged_alignment(full, full, 64, 0) >= averaged_alignment(unbiased, full, 64, 0)


def _planted_batch(rng: np.random.Generator, b: int, strength: float) -> BatchData:
    """4 groups of 2 successes and 2 failures, 6 chunks each (phases 0 0 1 1 1 1); the head
    gradient of a phase-0 chunk leans towards a fixed direction in successes and away from it
    in failures (signal), phase 1 is noise only (no signal, twice the chunks)."""
    direction = np.zeros(16, dtype=np.float32)
    direction[0] = strength
    trajs, adv = [], []
    for g in range(4):
        for i in range(4):
            success = i < 2
            head = rng.normal(0, 1.0, size=(6, 16)).astype(np.float32)
            head[:2] += direction if success else -direction
            trajs.append(Trajectory(
                task_id="t", group_id=f"b{b}/g{g}", instruction="", obs={},
                actions=np.zeros((6, 1, 1), np.float32), old_logp=np.zeros(6, np.float32),
                phase_ids=np.array([0, 0, 1, 1, 1, 1]), success=success, num_steps=6,
                head_grad=head))
            adv.append(1.0 if success else -1.0)
    return BatchData(trajectories=trajs, advantages=np.array(adv), rows=np.zeros((0, 2), int),
                     grads=np.zeros((0, 1), np.float32))


def test_online_convergence_finds_the_planted_phase_with_more_batches() -> None:
    rng = np.random.default_rng(0)
    k = 12
    data = [_planted_batch(rng, b, strength=0.4) for b in range(k)]
    phases = [[t.phase_ids for t in d.trajectories] for d in data]
    parts = np.zeros((k, 2, 3))
    parts[:, 0, 0] = 1.0  # the measured signal: all in phase 0
    est = Estimator("pcm signal mean", "pcm", "signal", "mean", 0.1, signal_dim=32)
    online = online_convergence(est, data, phases, parts, 2, 0.2, seed=0, orders=16)
    assert online["signal_top_phase"] == 0 and online["positions"] == [1, 2, 5, 10, 12]
    first, last = online["top_on_signal_phase"][0], online["top_on_signal_phase"][-1]
    assert last >= 0.9 and last >= first
    assert online["mean_keep_weights"][-1][0] > online["mean_keep_weights"][0][0]
    # the measured top phase is what the fractions count: name phase 1 and they flip
    parts = parts[:, ::-1]
    flipped = online_convergence(est, data, phases, parts, 2, 0.2, seed=0, orders=16)
    assert flipped["signal_top_phase"] == 1
    assert flipped["top_on_signal_phase"][-1] == pytest.approx(1.0 - last)
