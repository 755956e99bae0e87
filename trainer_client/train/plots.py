"""The training PNG: success rate, per-phase keep probabilities and the time split over steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

PLOT_FILE = "training.png"


def moving_average(values: list[float], window: int) -> np.ndarray:
    """Trailing mean over up to `window` values (same length as `values`)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, v.size + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_training(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Three panels over RL steps: success rate (per step, trailing mean, held-out evaluations),
    keep probability of each phase, and seconds per step split into rollout/select/backward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps_rows = [r for r in rows if r.get("kind", "step") == "step"]
    eval_rows = [r for r in rows if r.get("kind") == "eval"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    ax_s, ax_k, ax_t = axes
    steps = [r["step"] for r in steps_rows]

    success = [r["success_rate"] for r in steps_rows]
    ax_s.plot(steps, success, ".", color="tab:blue", alpha=0.35, label="rollout batch")
    ax_s.plot(steps, moving_average(success, 10), color="tab:blue", label="trailing mean (10)")
    for mode, marker in (("sampled", "o"), ("deterministic", "s")):
        ev = [r for r in eval_rows if r.get("mode") == mode]
        if ev:
            ax_s.plot(
                [r["step"] for r in ev],
                [r["success_rate"] for r in ev],
                marker + "-",
                color="tab:green" if mode == "sampled" else "tab:gray",
                label=f"held-out eval ({mode})",
            )
    ax_s.set(xlabel="step", ylabel="success rate", ylim=(-0.02, 1.02), title="success rate")
    ax_s.legend(fontsize=8)

    probs = [r.get("keep_probs") for r in steps_rows]
    if probs and all(p for p in probs):
        arr = np.asarray(probs, dtype=np.float64)  # (steps, P)
        for p in range(arr.shape[1]):
            ax_k.plot(steps, arr[:, p], label=f"phase {p}")
        ax_k.axhline(1.0 / arr.shape[1], color="k", ls=":", lw=1, label="uniform")
        ax_k.legend(fontsize=8)
    kept = [r.get("kept_fraction") for r in steps_rows]
    mean_kept = np.mean([k for k in kept if k is not None]) if any(kept) else float("nan")
    ax_k.set(
        xlabel="step",
        ylabel="keep probability",
        title=f"per-phase keep probabilities (mean kept fraction {mean_kept:.2f})",
    )

    bottom = np.zeros(len(steps))
    for key, color in (
        ("rollout_s", "tab:orange"),
        ("select_s", "tab:purple"),
        ("backward_s", "tab:red"),
    ):
        vals = np.asarray([r.get(key, 0.0) for r in steps_rows], dtype=np.float64)
        ax_t.bar(steps, vals, bottom=bottom, color=color, width=1.0, label=key[:-2])
        bottom += vals
    ax_t.set(xlabel="step", ylabel="seconds", title="time per step")
    ax_t.legend(fontsize=8)

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_time_split(ax: Any, seconds: dict[str, dict[str, float]]) -> None:
    """Stacked seconds per RL step (rollout, select, backward) per algorithm, with the backward
    share written above each bar. seconds: algo -> stage -> seconds per step."""
    names = list(seconds)
    bottom = np.zeros(len(names))
    for stage, color in (("rollout", "tab:orange"), ("select", "tab:purple"),
                         ("backward", "tab:red")):
        stage_s = np.array([seconds[a][stage] for a in names])
        ax.bar(names, stage_s, bottom=bottom, color=color, label=stage)
        bottom += stage_s
    for i, a in enumerate(names):
        share = seconds[a]["backward"] / bottom[i] if bottom[i] else 0.0
        ax.text(i, bottom[i], f"backward {share:.0%}", ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="seconds per step (mean)", title="time split per RL step")
    ax.legend(fontsize=8)
