"""The estimator's regime: GRPO's gradient noise scale, and the per-step efficiency it predicts
for a masked update (`pcm-bench estimator`, `regime` in its JSON).

From the estimator's exact per-chunk gradients g_c (sketched) of K batches of B rollouts, with
G_b = sum_c g_c / N_b batch b's GRPO gradient (N_b its informative chunks) and G_bp its part in
phase p:

- signal S = ||E G||^2, from inner products across batches (no noise term), per phase S_p;
- noise N = E||G_b||^2 - S, the full batch gradient's variance, per phase N_p;
- the gradient noise scale in rollouts, B_noise = B N / S (McCandlish et al. 2018, arXiv
  1812.06162: a step's progress ~ 1 / (1 + B_noise / B)); per phase B N_p / S_p;
- a masked update with inclusion probabilities pi_c and Horvitz-Thompson weights adds the
  variance N_samp,b = sum_c (1 / pi_c - 1) ||g_c||^2 / N_b^2, so it keeps the predicted share
  e = (S + N) / (S + N + mean_b N_samp,b) of GRPO's progress per step. Rows: uniform keep
  fractions, and `auto`, the adaptive budget (selector core, `budget_rule auto`) run on the
  trainer's gradient sketches of each batch, its pi scored with the exact gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from selector_service.core import RunConfig
from selector_service.core.budget import Budget, choose_budget
from trainer_client.features import chunk_features

UNIFORM_FRACTIONS = (0.1, 0.2, 0.5)


def _noise_scale(signal: float, noise: float, rollouts: int) -> float | None:
    return rollouts * noise / signal if signal > 0 else None


def _efficiency(signal: float, noise: float, sampling: float) -> float:
    total = max(signal + noise, 0.0)
    return total / (total + sampling) if total + sampling > 0 else 1.0


def regime(data: Sequence[Any], row_phases: Sequence[np.ndarray], parts: np.ndarray,
           rollouts: int, signal_dim: int,
           targets: Sequence[float] = (0.6, 0.7, 0.8)) -> dict[str, Any]:
    """data: the estimator's `BatchData`; parts (K, P, S): each batch's phase parts of its GRPO
    gradient (`phase_table`). Returns the noise scale overall and per phase, and the predicted
    per-step efficiency of uniform masking and of the adaptive budget."""
    k, num_phases, _ = parts.shape
    full = parts.sum(axis=1)  # (K, S): G_b
    gram = full @ full.T
    signal = float((gram.sum() - np.trace(gram)) / (k * (k - 1)))
    noise = float(np.trace(gram) / k) - signal
    per_phase = []
    for p in range(num_phases):
        g = parts[:, p] @ parts[:, p].T
        s_p = float((g.sum() - np.trace(g)) / (k * (k - 1)))
        n_p = float(np.trace(g) / k) - s_p
        per_phase.append({"phase": p, "signal": s_p, "noise": n_p,
                          "noise_scale_rollouts": _noise_scale(s_p, n_p, rollouts)})
    sq = [np.einsum("rs,rs->r", d.grads.astype(np.float64), d.grads.astype(np.float64))
          for d in data]  # ||g_c||^2 per informative chunk
    n_b = [max(len(d.rows), 1) for d in data]
    rows: list[dict[str, Any]] = []
    for f in UNIFORM_FRACTIONS:
        samp = float(np.mean([(1.0 / f - 1.0) * a.sum() / n ** 2
                              for a, n in zip(sq, n_b, strict=True)]))
        rows.append({"selection": f"uniform {f:g}", "kept_fraction": f,
                     "efficiency": _efficiency(signal, noise, samp)})
    for target in targets:
        kept, samp_exact, predicted = [], [], []
        for d, a, n in zip(data, sq, n_b, strict=True):
            b = _budget(d, target, signal_dim)
            if b is None:
                continue
            kept.append(b.keep_fraction)
            samp_exact.append(float(np.sum((1.0 / b.pi - 1.0) * a) / n ** 2))
            predicted.append(b.efficiency)
        rows.append({"selection": f"auto (e* {target:g})",
                     "kept_fraction": float(np.mean(kept)) if kept else None,
                     "kept_fraction_range": [min(kept), max(kept)] if kept else None,
                     "efficiency": (_efficiency(signal, noise, float(np.mean(samp_exact)))
                                    if kept else None),
                     "rule_efficiency_mean": float(np.mean(predicted)) if predicted else None})
    return {"rollouts_per_batch": rollouts, "signal": signal, "noise": noise,
            "noise_scale_rollouts": _noise_scale(signal, noise, rollouts),
            "phases": per_phase, "selections": rows}


def _budget(d: Any, target: float, signal_dim: int) -> Budget | None:
    """The adaptive budget on batch d's informative chunks (in `d.rows` order) from the
    trainer's sketches, its signal term S left at 0: the rule as on a run's first batch, the
    most it keeps."""
    if len(d.rows) == 0 or not d.trajectories:
        return None
    features = chunk_features(d.trajectories, d.advantages, "signal", signal_dim)
    x = np.stack([features[i][c] for i, c in d.rows])
    groups = {g: j for j, g in enumerate(dict.fromkeys(t.group_id for t in d.trajectories))}
    group_of_row = np.array([groups[d.trajectories[i].group_id] for i, _ in d.rows])
    cfg = RunConfig(budget_rule="auto", target_efficiency=target)
    return choose_budget(x, np.ones(len(x), dtype=bool), group_of_row, 0.0, target=target,
                         min_fraction=cfg.min_keep_fraction, rate_floor=cfg.rate_floor,
                         fallback_fraction=cfg.keep_fraction)
