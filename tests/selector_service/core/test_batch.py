"""Input validation of the core: errors of the project's type, naming the field."""

from __future__ import annotations

import numpy as np
import pytest

from pcm_contract.errors import InvalidArgument
from selector_service.core import ChunkBatch, RunConfig


def _batch(**overrides: object) -> ChunkBatch:
    args: dict = {
        "task_ids": ["t", "t"],
        "group_ids": ["g", "g"],
        "success": np.array([True, False]),
        "phase_ids": [[0, 1, 2], [0, 3]],
        "action_features": [np.zeros((3, 2)), np.zeros((2, 2))],
        "num_phases": 4,
        "feature_dim": 2,
    }
    args.update(overrides)
    return ChunkBatch.from_trajectories(**args)


def test_valid_batch_flattens() -> None:
    b = _batch()
    assert b.num_trajectories == 2 and b.num_chunks == 5
    np.testing.assert_array_equal(b.offsets, [0, 3, 5])
    np.testing.assert_array_equal(b.traj_of_chunk, [0, 0, 0, 1, 1])


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"action_features": [np.zeros((3, 2)), np.array([[0.0, np.nan], [0, 0]])]},
         "trajectories[1].action_features", "NaN"),
        ({"action_features": [np.zeros((3, 2)), np.array([[0.0, np.inf], [0, 0]])]},
         "trajectories[1].action_features", "infinite"),
        ({"action_features": [[[0.0, 0.0], [0.0], [0.0, 0.0]], np.zeros((2, 2))]},
         "trajectories[0].action_features", "ragged"),
        ({"phase_ids": [[0, 1, 4], [0, 3]]}, "trajectories[0].phase_ids", "outside [0, 4)"),
        ({"phase_ids": [[0, 1, 2], [-1, 3]]}, "trajectories[1].phase_ids", "outside"),
        ({"feature_dim": 3}, "trajectories[0].action_features", "feature_dim is 3"),
        ({"action_features": [np.zeros((2, 2)), np.zeros((2, 2))]},
         "trajectories[0].action_features", "one feature row per chunk"),
        ({"task_ids": [], "group_ids": [], "success": np.array([], dtype=bool),
          "phase_ids": [], "action_features": []}, "trajectories", "empty"),
        ({"phase_ids": [[], [0, 3]], "action_features": [np.zeros((0, 2)), np.zeros((2, 2))]},
         "trajectories[0].phase_ids", "at least one chunk"),
        ({"phase_ids": [[0.5, 1, 2], [0, 3]]}, "trajectories[0].phase_ids", "integers"),
    ],
)
def test_bad_input_names_the_field(overrides: dict, field: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        _batch(**overrides)
    assert info.value.field == field
    assert words in info.value.message


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"keep_fraction": 0.0}, "keep_fraction"),
        ({"keep_fraction": 1.5}, "keep_fraction"),
        ({"keep_fraction": float("nan")}, "keep_fraction"),
        ({"phases": 0}, "phases"),
        ({"eps": -0.1}, "eps"),
        ({"eta": 0.0}, "eta"),
        ({"weighting": "sqrt"}, "weighting"),
        ({"mode": "ppo"}, "mode"),
        ({"seed": -1}, "seed"),
        ({"feature_dim": 0}, "feature_dim"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        RunConfig(**kwargs)
    assert info.value.field == field
