"""A run's PCM configuration (docs/design.md, "Run configuration").

The fields, defaults, bounds and help texts are the contract's (`pcm_contract.run_config`);
this is the checked, immutable form the algorithm computes with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from pcm_contract.errors import InvalidArgument
from pcm_contract.run_config import RUN_CONFIG_FIELDS, RunConfigSchema, problem


@dataclass(frozen=True)
class RunConfig(RunConfigSchema):
    """Configuration of one training run's chunk selection, every field checked on creation
    (raises InvalidArgument naming the first bad field)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            message = problem(f, getattr(self, f.name))
            if message is not None:
                raise InvalidArgument(f.name, message)
        if self.budget_rule == "auto" and self.mode != "grpo" and self.score != "signal":
            raise InvalidArgument(
                "budget_rule", "auto chooses the chunks from their gradient sketches, which "
                f"only score 'signal' sends (score is {self.score!r}); use budget_rule 'fixed' "
                "with score 'action'")
        if self.phase_weighting == "wiener" and self.budget_rule != "auto":
            raise InvalidArgument(
                "phase_weighting", "wiener weights the adaptive budget's phases from their "
                "measured signal and noise: use budget_rule 'auto' (and score 'signal')")
        if self.budget_objective == "rate" and self.budget_rule != "auto":
            raise InvalidArgument(
                "budget_objective", "rate chooses how many chunks the adaptive budget keeps: "
                "use budget_rule 'auto' (and score 'signal')")
        if self.keep_rule == "paper" and self.mode == "pcm":
            if self.budget_rule == "auto":
                raise InvalidArgument(
                    "keep_rule", "paper draws a fixed budget with the phase keep weights; "
                    "budget_rule auto chooses its own: use budget_rule 'fixed'")
            if self.weighting == "ht":
                raise InvalidArgument(
                    "keep_rule", "paper draws by weighted sampling without replacement, whose "
                    "inclusion probabilities 1/pi would need are not exact: use weighting "
                    "'mean' (the paper's) or 'none'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        unknown = set(data) - set(RUN_CONFIG_FIELDS)
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidArgument(name, f"unknown run config field; known: "
                                        f"{sorted(RUN_CONFIG_FIELDS)}")
        return cls(**data)

    def updated(self, **changes: Any) -> RunConfig:
        return replace(self, **changes)


_KEEP_FRACTION = next(f for f in fields(RunConfigSchema) if f.name == "keep_fraction")


def check_keep_fraction(value: float, field: str = "keep_fraction") -> float:
    """A request's keep_fraction override, checked as the run's is."""
    message = problem(_KEEP_FRACTION, value)
    if message is not None:
        raise InvalidArgument(field, message)
    return float(value)
