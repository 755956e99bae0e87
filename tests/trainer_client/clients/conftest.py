"""Helpers of the remote-client tests; their real servers (``memory_selector``, ``redis_url``)
come from tests/fixtures/servers.py."""

from __future__ import annotations

from typing import Any

import numpy as np


def small_batch(request_id: str, *, seed: int = 0, trajectories: int = 8, chunks: int = 6,
                feature_dim: int = 4, tasks: int = 2, num_phases: int = 3) -> dict[str, Any]:
    """A GRPO-shaped batch (groups of 4, mixed outcomes) as a dict of the SelectRequest shape.
    Features are float32 values held as float64, so every transport scores the same numbers
    (gRPC sends float32; the server widens them to float64)."""
    rng = np.random.default_rng(seed)
    trajs = []
    for i in range(trajectories):
        c = chunks - (i % 3)
        trajs.append({
            "task_id": f"task{i % tasks}", "group_id": f"g{i // 4}-{i % tasks}",
            "success": bool((i // tasks + seed) % 2),
            "phase_ids": np.minimum(np.arange(c) * num_phases // c, num_phases - 1),
            "action_features": rng.normal(size=(c, feature_dim)).astype(np.float32)
                                  .astype(np.float64),
        })
    return {"request_id": request_id, "trainer_id": "t0", "step": seed, "trajectories": trajs}
