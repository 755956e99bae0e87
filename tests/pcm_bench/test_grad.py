"""`pcm-bench grad` on a tiny model: structure and sanity of the figures (no timing asserts)."""

from __future__ import annotations

import json

import numpy as np
import torch
from rich.console import Console

from pcm_bench.grad import GradConfig, print_table, run_grad_bench, synthetic_batch
from trainer_client.memory import SavedTensorMeter
from trainer_client.policy import PolicyConfig, VLAPolicy
from trainer_client.train.selection import random_selection

TINY = PolicyConfig.preset("tiny")


def test_grad_bench_structure_and_ratios():
    threads = torch.get_num_threads()
    result = run_grad_bench(GradConfig(
        keep_fractions="0.2,0.5",
        trajectories=4,
        chunks=10,
        group_size=2,
        rows_micro_batch=4,
        repeats=1,
        policy_config=TINY,
        threads=1,
    ))
    assert torch.get_num_threads() == threads  # restored
    assert result["torch_threads"] == 1
    json.dumps(result)  # JSON-serialisable as is
    assert result["model"]["params"] == VLAPolicy(TINY).num_params()
    assert result["batch"]["rows"] == 40 and result["batch"]["trajectories"] == 4
    assert result["row_cost_ms"]["forward_backward"] > 0
    assert result["grpo_results"]["kept_rows"] == 40
    assert result["grpo_results_rows"]["micro_batch"] == "rows:4"
    for key in ("results", "results_rows"):
        assert [r["keep_fraction"] for r in result[key]] == [0.2, 0.5]
        for r in result[key]:
            assert r["update_time_ratio"] > 0 and r["activation_memory_ratio"] > 0
            assert r["update_cpu_time_ratio"] > 0 and r["update_s_min"] <= r["update_s"]
    traj_02 = result["results"][0]
    assert traj_02["kept_rows"] == 8 and traj_02["micro_batches"] == 4
    # one trajectory per micro-batch: the peak follows the kept rows per trajectory (2 of 10)
    assert traj_02["activation_memory_ratio"] < 0.3
    assert result["results"][1]["activation_memory_ratio"] < 1.0

    # GRPO at its policy vs PCM packed under 25% of GRPO's largest micro-batch
    assert result["grpo_results_pack"]["update_s"] == result["grpo_results"]["update_s"]
    assert result["grpo_results_rows_pack"]["micro_batch"] == "rows:4"
    for key, grpo_rows, cap in (("results_pack", 10, 2), ("results_rows_pack", 4, 1)):
        assert [r["keep_fraction"] for r in result[key]] == [0.2, 0.5]
        for r in result[key]:
            assert r["micro_batch"] == "pack" and r["pack_cap"] == cap
            assert r["grpo_micro_batch_rows"] == grpo_rows and r["pack_memory_ratio"] == 0.25
            assert r["micro_batches"] == -(-r["kept_rows"] // cap)
            assert r["update_time_ratio"] > 0 and r["activation_memory_ratio"] > 0
    pack_02 = result["results_pack"][0]  # 2 kept rows per trajectory, cap 2: 4 micro-batches
    assert pack_02["micro_batches"] == 4 and pack_02["grpo_micro_batches"] == 4
    assert pack_02["activation_memory_ratio"] < 0.3
    assert result["results_rows"][0]["grpo_micro_batches"] == 10  # 40 rows / 4

    console = Console(record=True, width=250)
    print_table(result, console)
    text = console.export_text()
    assert "rows:4" in text and "trajectory" in text and "pack (cap 2)" in text


def test_grad_bench_runs_report_the_range():
    result = run_grad_bench(GradConfig(
        keep_fractions="0.2",
        trajectories=4,
        chunks=6,
        group_size=2,
        rows_micro_batch=4,
        repeats=1,
        runs=2,
        policy_config=TINY,
        threads=1,
    ))
    json.dumps(result)
    assert len(result["runs"]) == 2
    assert set(result["runs"][0]) == {
        f"{p}{k}" for k in ("results", "results_rows", "results_pack", "results_rows_pack")
        for p in ("", "grpo_")
    }
    for key in ("results", "results_rows", "results_pack", "results_rows_pack"):
        (rng,) = result["ranges"][key]
        assert rng["runs"] == 2 and rng["keep_fraction"] == 0.2
        values = [run[key][0]["update_time_ratio"] for run in result["runs"]]
        assert rng["update_time_ratio"] == [min(values), max(values)]
        assert rng["activation_memory_ratio"][0] == rng["activation_memory_ratio"][1]
    assert result["results"] == result["runs"][0]["results"]  # the top level is run 1
    console = Console(record=True, width=250)
    print_table(result, console)
    assert "over 2 runs" in console.export_text()
    # without pack: the two original comparisons only
    plain = run_grad_bench(GradConfig(keep_fractions="0.5", trajectories=2, chunks=4,
                                      group_size=2, repeats=1, pack=False, policy_config=TINY,
                                      threads=1))
    assert "results_pack" not in plain and "results_rows_pack" not in plain


def test_the_masks_are_the_selectors_random_mode_with_ht_weights():
    """The bench's masks: k_i = clamp(round(f C_i), 1, C_i) chunks per trajectory, rounded half
    to even as the selector's core rounds (f 0.5 keeps 2 of 5 chunks, 4 of 7), HT weights."""
    policy = VLAPolicy(TINY)
    for chunks, cases in ((7, ((0.2, 1), (0.5, 4), (0.01, 1), (1.0, 7))), (5, ((0.5, 2),))):
        trajectories = synthetic_batch(policy, num_trajectories=4, num_chunks=chunks,
                                       group_size=2)
        for f, k in cases:
            masks, weights = random_selection(trajectories, f, seed=0)
            for m, w in zip(masks, weights, strict=True):
                assert m.sum() == k
                np.testing.assert_allclose(w[m], chunks / k)
                assert np.all(w[~m] == 0)


def test_saved_tensor_meter_counts_storages_once_and_excludes_parameters():
    lin = torch.nn.Linear(64, 64)
    x = torch.randn(32, 64, requires_grad=True)
    with SavedTensorMeter(exclude=lin.parameters()) as meter:
        h = lin(x)  # saves x (8 KiB) and the weight (a parameter: excluded)
        y = (h * h).sum()  # saves h twice: one storage (8 KiB)
    assert meter.peak_bytes == 2 * 32 * 64 * 4
    y.backward()
    del h, y
    assert meter.current_bytes == 0
