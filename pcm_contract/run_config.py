"""The run configuration's one schema (docs/design.md, "Run configuration").

`RunConfigSchema` declares every field once: its type, default, bounds or choices and help
text (in the field's metadata, where a CLI generator finds it). Everything else is derived:
the HTTP bodies (`pcm_contract.models.RunConfigBody` / `RunConfigOut`), the core config with its
checks (`selector_service.core.config.RunConfig` subclasses the schema), the codec's field list
(`RUN_CONFIG_FIELDS`) and the choices a trainer validates against. The wire format stays
protos/pcm/v1/selector.proto's `RunConfig` message; a test checks the two agree field by field.

Adding a field here (and to the proto message) reaches the body, the core and the codec.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any

MODES = ("pcm", "grpo", "random")
WEIGHTINGS = ("mean", "ht", "none")
SCORES = ("signal", "action")
BUDGET_RULES = ("auto", "fixed")
KEEP_RULES = ("share", "paper")
PHASE_WEIGHTINGS = ("none", "wiener")
BUDGET_OBJECTIVES = ("efficiency", "rate")
MAX_SCORE_WINDOW = 1000
MAX_PHASES = 64
MAX_FEATURE_DIM = 4096
MAX_BUDGET = 1_000_000
MAX_SEED = 2**63  # exclusive: seeds are unsigned 63-bit integers
MIN_EPS = 1e-9  # the smallest positive exploration floor (eps / P must not underflow)


def option(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None,
           choices: tuple[str, ...] | None = None, min_positive: float | None = None,
           hint: str = "") -> Any:
    """A schema field: `default`, its `help` text, and what values are allowed.

    ge / gt / le / lt: numeric bounds; choices: the allowed strings; min_positive: a positive
    value must be at least this (0 stays allowed); hint: appended to the error message.
    """
    return field(default=default, metadata={
        "help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices,
        "min_positive": min_positive, "hint": hint})


@dataclass(frozen=True)
class RunConfigSchema:
    """Configuration of one training run's chunk selection: the fields, nothing else."""

    phases: int = option(
        4, "P: number of task phases that scores and keep weights are tracked for",
        ge=1, le=MAX_PHASES)
    keep_fraction: float = option(
        0.2, "f: fraction of a trajectory's chunks that is backpropagated (k_i = round(f C_i))",
        gt=0, le=1, hint="use 1.0 to keep every chunk")
    eps: float = option(
        0.1, "exploration floor: each phase keeps at least eps / P of the keep weight",
        ge=0, le=1, min_positive=MIN_EPS,
        hint="a smaller floor underflows: phases would get keep weight 0 although eps > 0")
    eta: float = option(0.1, "EMA rate of the online phase scores", gt=0, le=1)
    weighting: str = option(
        "mean", "loss weights of kept chunks: mean (the paper's: weight 1, the loss averaged "
        "over the kept chunks) | ht (1/pi, Horvitz-Thompson, unbiased for the full loss; "
        "pcm-train's default) | none (weight 1, the full loss's denominator)",
        choices=WEIGHTINGS)
    seed: int = option(
        0, "run seed: selection is deterministic given (seed, request_id) and the stored state",
        ge=0, lt=MAX_SEED)
    feature_dim: int = option(
        56, "D: length of every chunk's feature row (e.g. K actions x A dims)",
        ge=1, le=MAX_FEATURE_DIM)
    mode: str = option(
        "pcm", "pcm (phase-weighted) | grpo (keep every chunk) | random (same budget, uniform)",
        choices=MODES)
    score: str = option(
        "signal", "phase score of pcm: signal (learning signal of the advantage-weighted "
        "gradient sketches sent as features) | action (the paper's success-failure action "
        "variance of the features)", choices=SCORES)
    budget: int = option(
        0, "B: a fixed number of chunks per trajectory (k_i = min(B, C_i)) instead of the keep "
        "fraction; 0 uses keep_fraction", ge=0, le=MAX_BUDGET,
        hint="chunks per trajectory; 0 = use keep_fraction")
    budget_rule: str = option(
        "fixed", "how many chunks each batch keeps: fixed (keep_fraction or budget, drawn with "
        "the phase keep weights: the paper's setting) | auto (the fewest that keep "
        "target_efficiency of the full batch's expected progress, each chunk kept with "
        "probability proportional to its gradient sketch's norm; needs score signal; "
        "pcm-train's default)", choices=BUDGET_RULES)
    target_efficiency: float = option(
        0.6, "e*: with budget_rule auto, the share of the full batch's expected progress per "
             "step that the kept chunks must keep (noise-scale model)", gt=0, lt=1,
        hint="use budget_rule fixed with keep_fraction 1.0 to keep every chunk")
    min_keep_fraction: float = option(
        0.1, "f_min: with budget_rule auto, the least fraction of the informative chunks kept",
        gt=0, le=1)
    rate_floor: float = option(
        0.25, "rho: with budget_rule auto, every chunk's keep probability is at least rho times "
              "the batch's kept fraction (so is every phase's keep rate)", ge=0, le=1)
    score_window: int = option(
        0, "T_rc: 0 updates the phase scores after every batch (EMA at rate eta); T >= 1 is the "
           "paper's refresh: each phase's score is the mean of its evidence over T batches, "
           "recomputed every T batches (and from the first batch) and held in between",
        ge=0, le=MAX_SCORE_WINDOW, hint="the paper uses 5")
    keep_rule: str = option(
        "share", "how phase scores become chunk draws (budget_rule fixed): share (w_tp = "
        "eps / P + (1 - eps) s_tp / sum s, shared among the phase's chunks, systematic "
        "sampling) | paper (p_tp = max(eps, s_tp / max s), every chunk weighted by its "
        "phase's p, k_i chunks drawn by weighted sampling without replacement)",
        choices=KEEP_RULES)
    phase_weighting: str = option(
        "none", "with budget_rule auto: none (the unbiased update) | wiener (each phase's kept "
        "chunks also weighted by alpha_tp = max(eps, S_tp / (S_tp + N_tp)), its measured "
        "signal over signal plus noise: a biased update that damps noise-only phases)",
        choices=PHASE_WEIGHTINGS)
    budget_objective: str = option(
        "efficiency", "with budget_rule auto: efficiency (the fewest chunks that keep "
        "target_efficiency) | rate (the chunks that maximise the predicted progress per second, "
        "the kept share of the progress over the step time fitted to the trainer's reported "
        "timings: every chunk where masking cannot save time; target_efficiency until 5 "
        "reports in which the kept chunks vary)", choices=BUDGET_OBJECTIVES)


def schema_fields() -> tuple[Field[Any], ...]:
    return fields(RunConfigSchema)


RUN_CONFIG_FIELDS: tuple[str, ...] = tuple(f.name for f in schema_fields())


def field_type(f: Field[Any]) -> type:
    """The Python type of a schema field (`int`, `float` or `str`; an optional one's, e.g.
    `int | None`, that of its values)."""
    names = {"int": int, "float": float, "str": str}
    if isinstance(f.type, str):
        return names[f.type.removesuffix(" | None")]
    return f.type


def problem(f: Field[Any], value: object) -> str | None:
    """Why `value` is not allowed for field `f` (None when it is): the message of the
    InvalidArgument that names the field. `f`'s metadata says what is allowed (`option`'s
    keywords; a field of another config that states none of them allows any value)."""
    return value_problem(value, field_type(f), f.metadata)


def value_problem(value: object, kind: type, meta: Mapping[str, Any]) -> str | None:
    """Why `value` of type `kind` is not allowed by `meta` (`option`'s keywords: ge, gt, le, lt,
    choices, min_positive, hint; a missing one is no limit), or None. A range bounded on both
    sides reads "must be in [a, b], got v"; one bounded on one side "must be >= a"."""
    choices = meta.get("choices")
    if choices is not None:
        return None if value in choices else f"must be one of {choices}, got {value!r}"
    ok = _is_int(value) if kind is int else _is_real(value)
    if ok:
        assert isinstance(value, int | float)
        ok = _within(value, meta)
    if ok:
        return None
    hint = f" ({meta['hint']})" if meta.get("hint") else ""
    if not _two_sided(meta):  # the flag's error names the value: only the bound is said
        integer = "an integer " if kind is int and not _is_int(value) else ""
        return f"must be {integer}{_interval(meta)}{hint}"
    if kind is int:
        return f"must be an integer {_interval(meta)}{hint}, got {value!r}"
    return f"must be {_interval(meta)}, got {value!r}{hint}"


def _two_sided(meta: Mapping[str, Any]) -> bool:
    lower = meta.get("ge") is not None or meta.get("gt") is not None
    upper = meta.get("le") is not None or meta.get("lt") is not None
    return lower and upper


def _within(value: float, meta: Mapping[str, Any]) -> bool:
    lo, hi = (meta.get("ge"), meta.get("gt")), (meta.get("le"), meta.get("lt"))
    if (lo[0] is not None and value < lo[0]) or (lo[1] is not None and value <= lo[1]):
        return False
    if (hi[0] is not None and value > hi[0]) or (hi[1] is not None and value >= hi[1]):
        return False
    tiny = meta.get("min_positive")
    return tiny is None or value == 0 or value >= tiny


def _interval(meta: Mapping[str, Any]) -> str:
    if not _two_sided(meta):  # one bound: ">= 2", "> 0", "<= 1", "< 1"
        for key, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if meta.get(key) is not None:
                return f"{op} {_num(meta[key])}"
        return "a number"
    left = f"[{_num(meta['ge'])}" if meta.get("ge") is not None else f"({_num(meta['gt'])}"
    right = f"{_num(meta['le'])}]" if meta.get("le") is not None else f"{_num(meta['lt'])})"
    if meta.get("min_positive") is not None:
        return f"0 or in [{meta['min_positive']:g}, {right}"
    return f"in {left}, {right}"


def _num(value: float) -> str:
    if value == MAX_SEED:
        return "2**63"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))
