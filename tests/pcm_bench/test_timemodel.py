"""The learning study's time model: its fit recovers planted costs."""

from __future__ import annotations

import numpy as np
import pytest

from pcm_bench.timemodel import TimeModel, fit_time_model


def test_the_fit_recovers_planted_costs() -> None:
    rng = np.random.default_rng(0)
    planted = TimeModel(c_env=2e-3, c_rollout0=0.4, c_row=0.02, c_update0=0.3)
    rows = []
    for i in range(40):
        env, kept = int(rng.integers(2000, 4000)), int(rng.choice([80, 400]))
        rows.append({"step": i, "env_steps": env, "kept_chunks": kept,
                     "rollout_s": planted.c_env * env + planted.c_rollout0,
                     "select_s": 0.01, "backward_s": planted.c_row * kept + planted.c_update0
                     - 0.01})
    model, fit = fit_time_model(rows)
    assert model.c_env == pytest.approx(planted.c_env)
    assert model.c_row == pytest.approx(planted.c_row)
    assert model.c_rollout0 + model.c_update0 == pytest.approx(0.7)
    assert fit["step_rel_rmse"] == pytest.approx(0.0, abs=1e-9)
    # cumulative modelled time, and the JSON round trip
    np.testing.assert_allclose(model.run_s([3000, 3000], [80, 400]),
                               np.cumsum([6.0 + 0.4 + 1.6 + 0.3, 6.0 + 0.4 + 8.0 + 0.3]))
    assert TimeModel.from_dict({"model": model.to_dict()}["model"]) == model
