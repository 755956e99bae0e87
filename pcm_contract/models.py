"""Request and answer models (docs/design.md, "Bodies"): their JSON is the HTTP body.

Array fields hold NumPy arrays (lists are accepted and converted; JSON output is lists), so the
embedded selector passes a trainer's arrays through without copying them into Python lists.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    ValidationError,
    WithJsonSchema,
    create_model,
    model_validator,
)

from pcm_contract.errors import InvalidArgument, invalid_from_validation
from pcm_contract.run_config import MAX_FEATURE_DIM, MAX_PHASES, field_type, schema_fields

# Limits on one Select request. The largest public shape, a full LIBERO GRPO step, is
# 512 trajectories x 64 chunks x D 56 (docs/design.md, "Measured claims").
MAX_TRAJECTORIES = 4096
MAX_CHUNKS_PER_TRAJECTORY = 2048
MAX_TOTAL_FLOATS = 32 * 1024 * 1024  # features summed over the batch (128 MiB as float32)

# Anchored for JSON Schema / OpenAPI (whose `$` is the end of input); Python code matches them
# with `fullmatch` (`valid_run_id`), since Python's `$` also matches before a final newline.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+=-]{0,127}$"  # no braces: keys are hash-tagged
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SELECTION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+=-]{0,255}$"
_RUN_ID_RE = re.compile(RUN_ID_PATTERN)
_ID_RE = re.compile(ID_PATTERN)
# selection_id of a client's local selection (trainer_client.clients.local): the prefix and
# the request_id. The service registers it when the client replays that batch.
LOCAL_SELECTION_PREFIX = "local-"
RUN_ID_DESCRIPTION = "1-64 chars: letters, digits, ._- (first a letter or digit)"

Identifier = Annotated[
    str, Field(pattern=ID_PATTERN, description="1-128 chars: letters, digits, ._:/@+=-")]
RunId = Annotated[str, Field(pattern=RUN_ID_PATTERN, description=RUN_ID_DESCRIPTION)]
SelectionId = Annotated[
    str, Field(pattern=SELECTION_ID_PATTERN,
               description="a selection_id the service answered (`sel-...`), or `local-` + the "
                           "request_id of a client's local selection")]


def valid_run_id(value: object) -> bool:
    return isinstance(value, str) and _RUN_ID_RE.fullmatch(value) is not None


def _scalar(value: Any) -> Any:
    """NumPy scalars as Python scalars (a trainer's np.bool_ / np.int64), nothing else."""
    return value.item() if isinstance(value, np.generic) else value


# Strict scalars: a bool is a bool and a number is a number (no "yes", 1, "3", true -> 1).
# Integers are accepted where a float is expected; NumPy scalars are unwrapped first.
StrictBool = Annotated[bool, BeforeValidator(_scalar), Strict()]
StrictInt = Annotated[int, BeforeValidator(_scalar), Strict()]
StrictFloat = Annotated[float, BeforeValidator(_scalar), Strict()]


def _to_int_vector(value: Any) -> np.ndarray:
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if arr.ndim != 1:
        raise ValueError(f"must be a flat list of integers, got shape {arr.shape}")
    if arr.size and (arr.dtype.kind not in "iu"):
        raise ValueError(f"must hold integers, got {arr.dtype}")
    if arr.shape[0] > MAX_CHUNKS_PER_TRAJECTORY:
        raise ValueError(f"has {arr.shape[0]} chunks, over the limit of "
                         f"{MAX_CHUNKS_PER_TRAJECTORY} per trajectory")
    return arr.astype(np.int64, copy=False)


def _to_float_matrix(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray) and value.dtype in (np.float32, np.float64):
        arr = value
    else:
        if isinstance(value, list) and any(isinstance(v, bool) for row in value[:1]
                                           for v in (row if isinstance(row, list) else [])):
            raise ValueError("must hold numbers, got booleans")
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (ValueError, TypeError):
            raise ValueError("must be a list of equal-length rows of numbers "
                             "(ragged rows or non-numbers found)") from None
    if arr.ndim != 2:
        raise ValueError(f"must be a 2-D array (chunks x feature_dim), got shape {arr.shape}")
    if arr.shape[1] > MAX_FEATURE_DIM:
        raise ValueError(f"rows have {arr.shape[1]} values, over the limit of {MAX_FEATURE_DIM}")
    return arr


def _to_bool_vector(value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        raise ValueError("must be a flat list of booleans") from None
    if arr.ndim != 1 or (arr.size and arr.dtype != np.bool_):
        raise ValueError("must be a flat list of booleans")
    return arr.astype(bool, copy=False)


def _to_float_vector(value: Any) -> np.ndarray:
    if isinstance(value, list) and any(isinstance(v, bool) for v in value):
        raise ValueError("must hold numbers, got booleans")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise ValueError("must be a flat list of numbers") from None
    if arr.ndim != 1:
        raise ValueError("must be a flat list of numbers")
    return arr


IntVector = Annotated[
    np.ndarray,
    BeforeValidator(_to_int_vector),
    PlainSerializer(lambda a: a.tolist(), return_type=list),
    WithJsonSchema({"type": "array", "items": {"type": "integer"}}),
]
FloatMatrix = Annotated[
    np.ndarray,
    BeforeValidator(_to_float_matrix),
    PlainSerializer(lambda a: a.tolist(), return_type=list),
    WithJsonSchema({"type": "array", "items": {"type": "array", "items": {"type": "number"}}}),
]
BoolVector = Annotated[
    np.ndarray,
    BeforeValidator(_to_bool_vector),
    PlainSerializer(lambda a: a.tolist(), return_type=list),
    WithJsonSchema({"type": "array", "items": {"type": "boolean"}}),
]
FloatVector = Annotated[
    np.ndarray,
    BeforeValidator(_to_float_vector),
    PlainSerializer(lambda a: a.tolist(), return_type=list),
    WithJsonSchema({"type": "array", "items": {"type": "number"}}),
]


class _Model(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")


# ---------------------------------------------------------------------------------------------
# Runs


class _RunConfigBodyBase(_Model):
    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


def _body_field(f: dataclasses.Field[Any]) -> tuple[Any, Any]:
    """A run-config schema field as an optional body field (None: not given)."""
    meta = f.metadata
    kind = field_type(f)
    strict: Any = {int: StrictInt, float: StrictFloat, str: str}[kind]
    annotation: Any = Literal[meta["choices"]] if meta["choices"] else strict
    bounds = {k: meta[k] for k in ("ge", "gt", "le", "lt") if meta[k] is not None}
    return annotation | None, Field(None, description=f"{meta['help']} (default {f.default})",
                                    **bounds)


def _out_field(f: dataclasses.Field[Any]) -> tuple[Any, Any]:
    return field_type(f), Field(..., description=f.metadata["help"])


# Both derived from the one schema (pcm_contract.run_config): a field added there is a field of
# the body and of the answer. mypy sees the base classes.
if TYPE_CHECKING:
    RunConfigBody = _RunConfigBodyBase
    RunConfigOut = _Model
else:
    RunConfigBody = create_model(
        "RunConfigBody", __base__=_RunConfigBodyBase, __module__=__name__,
        __doc__="`PUT /v1/runs/{run_id}` body; omitted fields take their defaults (or, for an "
                "existing run, keep their stored values).",
        **{f.name: _body_field(f) for f in schema_fields()})
    RunConfigOut = create_model(
        "RunConfigOut", __base__=_Model, __module__=__name__,
        __doc__="A run's configuration, every field.",
        **{f.name: _out_field(f) for f in schema_fields()})


class TaskStateOut(_Model):
    scores: list[float | None]  # s_tp; null until phase p was first observed
    keep_probs: list[float]  # w_tp
    observations: list[int]
    chunks_total: list[int]
    chunks_kept: list[int]
    trajectories: int
    skipped_trajectories: int
    state_version: int  # batches that touched this task


STORE_EPOCH_DESCRIPTION = (
    "identifies the phase-state store's current incarnation (it changes when the store restarts; "
    "clients replay what was acknowledged shortly before such a change, as a restart may lose "
    "the last second of writes)")


class RunInfo(_Model):
    run_id: str
    config: RunConfigOut
    state_version: int  # selects committed on this run
    outcome_reports: int
    tasks: dict[str, TaskStateOut]
    store_epoch: str = Field(default="", description=STORE_EPOCH_DESCRIPTION)


class DeleteAck(_Model):
    deleted: bool


# ---------------------------------------------------------------------------------------------
# Select


class TrajectoryIn(_Model):
    task_id: Identifier
    group_id: Identifier
    success: StrictBool
    phase_ids: IntVector  # (C,)
    action_features: FloatMatrix  # (C, D)


_SELECT_EXAMPLE: Any = {
    "request_id": "trainer-0/step-1", "trainer_id": "trainer-0", "step": 1,
    "trajectories": [
        {"task_id": "pick-place", "group_id": "init-0", "success": success,
         "phase_ids": [0, 1, 2, 3],
         "action_features": [[0.5, -0.25, 0.0, 1.0]] * 4}
        for success in (True, False)],
}


class SelectRequest(_Model):
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid",
                              json_schema_extra={"examples": [_SELECT_EXAMPLE]})

    request_id: Identifier
    trainer_id: Identifier = "trainer"
    step: StrictInt = Field(0, ge=0, lt=2**63)
    keep_fraction: StrictFloat | None = Field(None, gt=0, le=1,
                                              description="overrides the run's f")
    trajectories: list[TrajectoryIn] = Field(..., min_length=1, max_length=MAX_TRAJECTORIES)
    # A client's replay of a batch it selected locally (or of an answer it trained on): the
    # masks and weights it trained with. The service counts the batch with these masks, once
    # (docs/design.md, "Phantom commits"). Not part of the request's idempotency digest.
    trained_masks: list[BoolVector] | None = Field(
        None, max_length=MAX_TRAJECTORIES,
        description="per trajectory (C_i,): the masks the client trained on (replay of a local "
                    "or acknowledged selection); the run counts the batch with these")
    trained_weights: list[FloatVector] | None = Field(
        None, max_length=MAX_TRAJECTORIES,
        description="per trajectory (C_i,): the weights the client trained with; required "
                    "with trained_masks, 0 off the mask")

    @model_validator(mode="after")
    def _total_size(self) -> SelectRequest:
        total = sum(t.action_features.size for t in self.trajectories)
        if total > MAX_TOTAL_FLOATS:
            raise ValueError(f"trajectories: {total} feature values in all, over the limit of "
                             f"{MAX_TOTAL_FLOATS}; split the batch")
        return self


def check_trained(request: SelectRequest) -> None:
    """trained_masks / trained_weights line up with the trajectories (raises InvalidArgument)."""
    masks, weights = request.trained_masks, request.trained_weights
    if masks is None and weights is None:
        return
    if masks is None or weights is None:
        raise InvalidArgument("trained_masks" if masks is None else "trained_weights",
                              "trained_masks and trained_weights go together")
    n = len(request.trajectories)
    for name, arrays in (("trained_masks", masks), ("trained_weights", weights)):
        if len(arrays) != n:
            raise InvalidArgument(name, f"has {len(arrays)} entries for {n} trajectories")
    for i, (t, m, w) in enumerate(zip(request.trajectories, masks, weights, strict=True)):
        chunks = t.phase_ids.shape[0]
        for name, arr in (("trained_masks", m), ("trained_weights", w)):
            if arr.shape != (chunks,):
                raise InvalidArgument(f"{name}[{i}]", f"has {arr.shape[0]} entries for the "
                                                      f"trajectory's {chunks} chunks")
        if not np.isfinite(w).all() or (w < 0).any() or (w[~m] != 0).any():
            raise InvalidArgument(f"trained_weights[{i}]",
                                  "must be finite, >= 0, and 0 off the mask")


@dataclass(frozen=True)
class FlatSelect:
    """A Select request in flat form, as the gRPC message carries it: per-trajectory ids,
    outcomes and chunk counts C_i (N,), per-chunk phase ids (M,) and feature rows (M, D)
    concatenated in trajectory order, and the replayed masks / weights flat (M,). The gRPC
    server decodes into this and the application layer computes on it without splitting it per
    trajectory; `check()` applies the limits `SelectRequest` does, naming the same fields."""

    request_id: str
    trainer_id: str
    step: int
    keep_fraction: float | None
    task_ids: list[str]
    group_ids: list[str]
    success: np.ndarray  # bool (N,)
    lengths: np.ndarray  # int64 (N,)
    phase: np.ndarray  # int64 (M,)
    features: np.ndarray  # float32 (M, D)
    trained_mask: np.ndarray | None = None  # bool (M,)
    trained_weight: np.ndarray | None = None  # float64 (M,)

    def check(self) -> None:
        """Raise InvalidArgument naming the first field outside the request limits (the run's
        phases and feature_dim are checked later, by the core)."""
        for name, value in (("request_id", self.request_id), ("trainer_id", self.trainer_id)):
            if _ID_RE.fullmatch(value) is None:
                raise InvalidArgument(name, f"{value[:64]!r} is not a valid id (1-128 chars: "
                                            "letters, digits, ._:/@+=-)")
        if not 0 <= self.step < 2**63:
            raise InvalidArgument("step", f"must be in [0, 2^63), got {self.step}")
        kf = self.keep_fraction
        if kf is not None and not 0 < kf <= 1:
            raise InvalidArgument("keep_fraction", f"must be in (0, 1], got {kf}")
        n = len(self.task_ids)
        if n == 0:
            raise InvalidArgument("trajectories", "the batch is empty; submit at least one")
        if n > MAX_TRAJECTORIES:
            raise InvalidArgument("trajectories", f"{n} trajectories, over the limit of "
                                                  f"{MAX_TRAJECTORIES} per request")
        for name, ids in (("task_id", self.task_ids), ("group_id", self.group_ids)):
            for value in set(ids):  # few distinct ids: check each once, then find the first
                if not isinstance(value, str) or _ID_RE.fullmatch(value) is None:
                    i = ids.index(value)
                    raise InvalidArgument(f"trajectories[{i}].{name}",
                                          f"{str(value)[:64]!r} is not a valid id (1-128 "
                                          "chars: letters, digits, ._:/@+=-)")
        over = self.lengths > MAX_CHUNKS_PER_TRAJECTORY
        if over.any():
            i = int(np.argmax(over))
            raise InvalidArgument(f"trajectories[{i}].phase_ids",
                                  f"has {int(self.lengths[i])} chunks, over the limit of "
                                  f"{MAX_CHUNKS_PER_TRAJECTORY} per trajectory")
        if self.features.ndim == 2 and self.features.shape[1] > MAX_FEATURE_DIM:
            raise InvalidArgument("trajectories[0].action_features",
                                  f"rows have {self.features.shape[1]} values, over the limit "
                                  f"of {MAX_FEATURE_DIM}")
        if self.features.size > MAX_TOTAL_FLOATS:
            raise InvalidArgument("trajectories", f"{self.features.size} feature values in "
                                                  f"all, over the limit of {MAX_TOTAL_FLOATS}; "
                                                  "split the batch")
        mask, weight = self.trained_mask, self.trained_weight
        if (mask is None) != (weight is None):
            raise InvalidArgument("trained_masks" if mask is None else "trained_weights",
                                  "trained_masks and trained_weights go together")
        if mask is not None and weight is not None:
            m = int(self.phase.shape[0])
            for name, arr in (("trained_masks", mask), ("trained_weights", weight)):
                if arr.shape != (m,):
                    raise InvalidArgument(name, f"has {arr.shape[0]} entries for {m} chunks")
            bad = ~np.isfinite(weight) | (weight < 0) | ((weight != 0) & ~mask)
            if bad.any():
                ends = np.cumsum(self.lengths)
                i = int(np.searchsorted(ends, int(np.argmax(bad)), side="right"))
                raise InvalidArgument(f"trained_weights[{i}]",
                                      "must be finite, >= 0, and 0 off the mask")

    @classmethod
    def from_request(cls, request: SelectRequest) -> FlatSelect:
        """The flat form of a validated SelectRequest whose trajectories have one feature width
        (raises ValueError otherwise: the caller names the offending trajectory)."""
        trajs = request.trajectories
        widths = {t.action_features.shape[1] for t in trajs}
        if len(widths) != 1:
            raise ValueError("ragged feature rows")
        for i, t in enumerate(trajs):
            chunks = t.phase_ids.shape[0]
            if chunks == 0:
                raise InvalidArgument(f"trajectories[{i}].phase_ids",
                                      "a trajectory needs at least one chunk")
            if t.action_features.shape[0] != chunks:
                raise InvalidArgument(
                    f"trajectories[{i}].action_features",
                    f"has {t.action_features.shape[0]} rows for {chunks} phase_ids "
                    "(one feature row per chunk)")
        mask = weight = None
        if request.trained_masks is not None and request.trained_weights is not None:
            mask = np.concatenate(request.trained_masks).astype(bool)
            weight = np.concatenate(request.trained_weights).astype(np.float64)
        return cls(
            request_id=request.request_id, trainer_id=request.trainer_id, step=request.step,
            keep_fraction=request.keep_fraction,
            task_ids=[t.task_id for t in trajs], group_ids=[t.group_id for t in trajs],
            success=np.fromiter((t.success for t in trajs), dtype=bool, count=len(trajs)),
            lengths=np.fromiter((t.phase_ids.shape[0] for t in trajs), dtype=np.int64,
                                count=len(trajs)),
            phase=np.concatenate([t.phase_ids for t in trajs]).astype(np.int64, copy=False),
            features=np.concatenate([t.action_features for t in trajs], axis=0,
                                    dtype=np.float32),
            trained_mask=mask, trained_weight=weight)


class SelectResponse(_Model):
    """Immutable: the service stores it for idempotent replays (its arrays are read-only)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", frozen=True)

    selection_id: str
    state_version: int
    masks: list[BoolVector]  # per trajectory (C_i,)
    weights: list[FloatVector]  # per trajectory (C_i,), 0 off the mask
    kept_chunks: int
    total_chunks: int
    skipped_trajectories: int
    keep_probs: dict[str, list[float]]  # task_id -> w_tp over phases
    store_epoch: str = Field(default="", description=STORE_EPOCH_DESCRIPTION)
    staleness: int = Field(default=0, ge=0, description=(
        "commits the state this selection was computed on lacked: the run's state_version "
        "then was state_version - 1 - staleness (its statistics still entered the state "
        "exactly once)"))
    keep_fraction: float = Field(default=0.0, ge=0, le=1, description=(
        "kept chunks over the chunks of informative trajectories: the budget this batch chose "
        "(0 when no group was informative)"))
    predicted_efficiency: float | None = Field(default=None, ge=0, description=(
        "budget_rule auto: the predicted share of the full batch's expected progress per step "
        "the kept chunks keep (noise-scale model; above 1 where phase_weighting wiener "
        "predicts its biased update to beat the full batch's); absent with a fixed budget"))
    predicted_rate: float | None = Field(default=None, ge=0, description=(
        "budget_objective rate, once the trainer's reported timings give its step time: the "
        "predicted progress per second relative to keeping every informative chunk, "
        "e(K) t(M) / t(K) (1 where the budget keeps every chunk); absent otherwise"))

    def same_as(self, other: SelectResponse) -> bool:
        """Field-by-field equality (arrays compared by value; store_epoch, which says where the
        answer was read from, is not compared)."""
        return (
            (self.selection_id, self.state_version, self.kept_chunks, self.total_chunks,
             self.skipped_trajectories, self.keep_probs, self.staleness, self.keep_fraction,
             self.predicted_efficiency, self.predicted_rate)
            == (other.selection_id, other.state_version, other.kept_chunks, other.total_chunks,
                other.skipped_trajectories, other.keep_probs, other.staleness,
                other.keep_fraction, other.predicted_efficiency, other.predicted_rate)
            and len(self.masks) == len(other.masks)
            and all(np.array_equal(a, b) for a, b in zip(self.masks, other.masks, strict=True))
            and all(np.array_equal(a, b) for a, b in zip(self.weights, other.weights,
                                                          strict=True))
        )


# ---------------------------------------------------------------------------------------------
# Outcomes


def _finite(value: float, name: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite")
    return value


class StageTimings(_Model):
    rollout_s: StrictFloat = Field(0.0, ge=0, allow_inf_nan=False)
    select_s: StrictFloat = Field(0.0, ge=0, allow_inf_nan=False)
    backward_s: StrictFloat = Field(0.0, ge=0, allow_inf_nan=False)


class OutcomeReport(_Model):
    selection_id: SelectionId
    request_id: Identifier
    trainer_id: Identifier = "trainer"
    step: StrictInt = Field(0, ge=0, lt=2**63)
    success_rate: StrictFloat = Field(..., ge=0, le=1, allow_inf_nan=False)
    loss: StrictFloat = Field(0.0, allow_inf_nan=False)
    kept_chunks: StrictInt = Field(0, ge=0, lt=2**63)
    timings: StageTimings = Field(
        default_factory=lambda: StageTimings(rollout_s=0.0, select_s=0.0, backward_s=0.0))
    phase_grad_norms: list[Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)]] | None = (
        Field(None, max_length=MAX_PHASES))


class OutcomeAck(_Model):
    accepted: bool
    store_epoch: str = Field(default="", description=STORE_EPOCH_DESCRIPTION)


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], value: M | Mapping[str, Any]) -> M:
    """`value` validated as `model` (a model instance passes through); a pydantic error becomes
    the InvalidArgument naming the first bad field, e.g. ``trajectories[2].action_features``.
    The service and the remote clients check input with this one function."""
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None
