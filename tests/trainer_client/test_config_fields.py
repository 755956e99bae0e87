"""The config dataclasses' one check: bounds on the fields (`opt`), checked by the run config's
own check, errors that name the flag."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from trainer_client.config_fields import check_bound, check_choice, check_fields, opt


@dataclass
class Toy:
    steps: int = opt(3, "steps", ge=2)
    rate: float = opt(0.5, "a fraction", gt=0, le=1)
    budget_s: float = opt(1.0, "seconds; 0 = off", ge=0, hint="0 = off")
    limit: int | None = opt(None, "a limit", ge=1)
    name: str = opt("x", "no bound")

    def __post_init__(self) -> None:
        check_fields(self)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 1}, "--steps 1: must be >= 2"),
        ({"steps": 2.5}, "--steps 2.5: must be an integer >= 2"),
        ({"rate": 0.0}, "--rate 0.0: must be in (0, 1], got 0.0"),
        ({"budget_s": -1.0}, "--budget-s -1.0: must be >= 0 (0 = off)"),
        ({"limit": 0}, "--limit 0: must be >= 1"),
    ],
)
def test_a_bad_value_names_the_flag_and_its_bound(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        Toy(**kwargs)
    assert str(err.value) == message


def test_good_values_and_unset_optional_fields_pass() -> None:
    Toy(steps=2, rate=1.0, budget_s=0, limit=None)


def test_a_bound_given_at_the_check_and_a_choice_read_the_same() -> None:
    with pytest.raises(ValueError, match=r"^--workers 0: must be >= 1$"):
        check_bound("workers", 0, ge=1)
    check_bound("workers", 1, ge=1)
    with pytest.raises(ValueError, match=r"^--mode 'x': use one of a \| b$"):
        check_choice("mode", "x", ("a", "b"))
