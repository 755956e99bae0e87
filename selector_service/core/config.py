"""A run's PCM configuration (docs/design.md, "Run configuration")."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from selector_service.errors import InvalidArgument

MODES = ("pcm", "grpo", "random")
WEIGHTINGS = ("mean", "ht", "none")
SCORES = ("action", "signal")
MAX_PHASES = 64
MAX_FEATURE_DIM = 4096
MAX_BUDGET = 1_000_000


MIN_EPS = 1e-9  # the smallest positive exploration floor (eps / P must not underflow)


@dataclass(frozen=True)
class RunConfig:
    """Configuration of one training run's chunk selection."""

    phases: int = 4
    """P: number of task phases that keep probabilities are tracked for."""
    keep_fraction: float = 0.2
    """f: fraction of a trajectory's chunks that is backpropagated (k_i = round(f C_i))."""
    eps: float = 0.1
    """Exploration mix: each phase keeps at least eps / P of the budget weight."""
    eta: float = 0.1
    """EMA rate of the online phase scores."""
    weighting: str = "mean"
    """`mean` (the paper's): weight 1, the loss averaged over the kept chunks; `ht`: kept chunks
    weighted 1/pi (Horvitz-Thompson, unbiased for the full loss); `none`: weight 1, the full
    loss's denominator."""
    seed: int = 0
    """Run seed; selection is deterministic given (seed, request_id) and the stored state."""
    feature_dim: int = 56
    """D: length of every chunk's action feature vector (e.g. K actions x A dims)."""
    mode: str = "pcm"
    """`pcm` (phase-weighted), `grpo` (keep every chunk) or `random` (same budget, uniform)."""
    score: str = "signal"
    """Phase score of `pcm`: `signal` (learning signal from the advantage-weighted action-head
    gradient sketches sent as features) or `action` (the paper's success-failure action
    variance of the features)."""
    budget: int = 0
    """B: a fixed number of chunks per trajectory (k_i = min(B, C_i)) instead of the keep
    fraction (the paper: B = 12 of ~64 chunks); 0 uses keep_fraction."""

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, message: str) -> None:
            if not ok:
                raise InvalidArgument(name, message)

        check(_is_int(self.phases) and 1 <= self.phases <= MAX_PHASES, "phases",
              f"must be an integer in [1, {MAX_PHASES}], got {self.phases!r}")
        check(_is_real(self.keep_fraction) and 0.0 < self.keep_fraction <= 1.0, "keep_fraction",
              f"must be in (0, 1], got {self.keep_fraction!r}; use 1.0 to keep every chunk")
        check(_is_real(self.eps) and (self.eps == 0.0 or MIN_EPS <= self.eps <= 1.0), "eps",
              f"must be 0 or in [{MIN_EPS:g}, 1], got {self.eps!r} (a smaller floor underflows: "
              "phases would get keep weight 0 although eps > 0)")
        check(_is_real(self.eta) and 0.0 < self.eta <= 1.0, "eta",
              f"must be in (0, 1], got {self.eta!r}")
        check(self.weighting in WEIGHTINGS, "weighting",
              f"must be one of {WEIGHTINGS}, got {self.weighting!r}")
        check(_is_int(self.seed) and 0 <= self.seed < 2**63, "seed",
              f"must be an integer in [0, 2**63), got {self.seed!r}")
        check(_is_int(self.feature_dim) and 1 <= self.feature_dim <= MAX_FEATURE_DIM,
              "feature_dim",
              f"must be an integer in [1, {MAX_FEATURE_DIM}], got {self.feature_dim!r}")
        check(self.mode in MODES, "mode", f"must be one of {MODES}, got {self.mode!r}")
        check(self.score in SCORES, "score", f"must be one of {SCORES}, got {self.score!r}")
        check(_is_int(self.budget) and 0 <= self.budget <= MAX_BUDGET, "budget",
              f"must be an integer in [0, {MAX_BUDGET}] (chunks per trajectory; 0 = use "
              f"keep_fraction), got {self.budget!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidArgument(name, f"unknown run config field; known: "
                                        f"{sorted(cls.__dataclass_fields__)}")
        return cls(**data)

    def updated(self, **changes: Any) -> RunConfig:
        return replace(self, **changes)


def check_keep_fraction(value: float, field: str = "keep_fraction") -> float:
    if not (_is_real(value) and 0.0 < value <= 1.0):
        raise InvalidArgument(field, f"must be in (0, 1], got {value!r}")
    return float(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))
