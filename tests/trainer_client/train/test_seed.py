"""`--seed -1`: scaled replicas sharing a run derive distinct, stable seeds from their ids."""

from __future__ import annotations

import pytest

from trainer_client.cli_options import build
from trainer_client.train.config import TrainConfig


def _config(**values: object) -> TrainConfig:
    return build(TrainConfig, {"env": "metaworld:reach-v3", **values})


def test_seed_derived_from_trainer_id() -> None:
    a = _config(seed=-1, trainer_id="trainer-a")
    a_again = _config(seed=-1, trainer_id="trainer-a")
    b = _config(seed=-1, trainer_id="trainer-b")
    assert a.seed == a_again.seed and a.seed != b.seed
    assert 0 <= a.seed < 2**31 and 0 <= b.seed < 2**31
    assert _config(seed=7, trainer_id="trainer-a").seed == 7


def test_negative_seed_other_than_minus_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="-1 to derive"):
        _config(seed=-2)
