from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunConfig(_message.Message):
    __slots__ = ("phases", "keep_fraction", "eps", "eta", "weighting", "seed", "feature_dim", "mode", "score", "budget", "budget_rule", "target_efficiency", "min_keep_fraction", "rate_floor", "score_window", "keep_rule", "phase_weighting", "budget_objective")
    PHASES_FIELD_NUMBER: _ClassVar[int]
    KEEP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    WEIGHTING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FEATURE_DIM_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    BUDGET_RULE_FIELD_NUMBER: _ClassVar[int]
    TARGET_EFFICIENCY_FIELD_NUMBER: _ClassVar[int]
    MIN_KEEP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    RATE_FLOOR_FIELD_NUMBER: _ClassVar[int]
    SCORE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    KEEP_RULE_FIELD_NUMBER: _ClassVar[int]
    PHASE_WEIGHTING_FIELD_NUMBER: _ClassVar[int]
    BUDGET_OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    phases: int
    keep_fraction: float
    eps: float
    eta: float
    weighting: str
    seed: int
    feature_dim: int
    mode: str
    score: str
    budget: int
    budget_rule: str
    target_efficiency: float
    min_keep_fraction: float
    rate_floor: float
    score_window: int
    keep_rule: str
    phase_weighting: str
    budget_objective: str
    def __init__(self, phases: _Optional[int] = ..., keep_fraction: _Optional[float] = ..., eps: _Optional[float] = ..., eta: _Optional[float] = ..., weighting: _Optional[str] = ..., seed: _Optional[int] = ..., feature_dim: _Optional[int] = ..., mode: _Optional[str] = ..., score: _Optional[str] = ..., budget: _Optional[int] = ..., budget_rule: _Optional[str] = ..., target_efficiency: _Optional[float] = ..., min_keep_fraction: _Optional[float] = ..., rate_floor: _Optional[float] = ..., score_window: _Optional[int] = ..., keep_rule: _Optional[str] = ..., phase_weighting: _Optional[str] = ..., budget_objective: _Optional[str] = ...) -> None: ...

class PutRunRequest(_message.Message):
    __slots__ = ("run_id", "config")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    config: RunConfig
    def __init__(self, run_id: _Optional[str] = ..., config: _Optional[_Union[RunConfig, _Mapping]] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class DeleteRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class DeleteRunResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class TaskState(_message.Message):
    __slots__ = ("scores", "keep_probs", "observations", "chunks_total", "chunks_kept", "trajectories", "skipped_trajectories", "state_version")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    KEEP_PROBS_FIELD_NUMBER: _ClassVar[int]
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_KEPT_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORIES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_TRAJECTORIES_FIELD_NUMBER: _ClassVar[int]
    STATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    keep_probs: _containers.RepeatedScalarFieldContainer[float]
    observations: _containers.RepeatedScalarFieldContainer[int]
    chunks_total: _containers.RepeatedScalarFieldContainer[int]
    chunks_kept: _containers.RepeatedScalarFieldContainer[int]
    trajectories: int
    skipped_trajectories: int
    state_version: int
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., keep_probs: _Optional[_Iterable[float]] = ..., observations: _Optional[_Iterable[int]] = ..., chunks_total: _Optional[_Iterable[int]] = ..., chunks_kept: _Optional[_Iterable[int]] = ..., trajectories: _Optional[int] = ..., skipped_trajectories: _Optional[int] = ..., state_version: _Optional[int] = ...) -> None: ...

class RunInfo(_message.Message):
    __slots__ = ("run_id", "config", "state_version", "outcome_reports", "tasks", "store_epoch")
    class TasksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: TaskState
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TaskState, _Mapping]] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    STATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_REPORTS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    STORE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    config: RunConfig
    state_version: int
    outcome_reports: int
    tasks: _containers.MessageMap[str, TaskState]
    store_epoch: str
    def __init__(self, run_id: _Optional[str] = ..., config: _Optional[_Union[RunConfig, _Mapping]] = ..., state_version: _Optional[int] = ..., outcome_reports: _Optional[int] = ..., tasks: _Optional[_Mapping[str, TaskState]] = ..., store_epoch: _Optional[str] = ...) -> None: ...

class SelectChunksRequest(_message.Message):
    __slots__ = ("run_id", "request_id", "trainer_id", "step", "keep_fraction", "task_ids", "group_ids", "success", "chunk_counts", "phase_ids", "action_features", "feature_dim", "trained_masks", "trained_weights")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRAINER_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    KEEP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    GROUP_IDS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNTS_FIELD_NUMBER: _ClassVar[int]
    PHASE_IDS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FEATURES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_DIM_FIELD_NUMBER: _ClassVar[int]
    TRAINED_MASKS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    request_id: str
    trainer_id: str
    step: int
    keep_fraction: float
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    group_ids: _containers.RepeatedScalarFieldContainer[str]
    success: _containers.RepeatedScalarFieldContainer[bool]
    chunk_counts: _containers.RepeatedScalarFieldContainer[int]
    phase_ids: _containers.RepeatedScalarFieldContainer[int]
    action_features: bytes
    feature_dim: int
    trained_masks: bytes
    trained_weights: bytes
    def __init__(self, run_id: _Optional[str] = ..., request_id: _Optional[str] = ..., trainer_id: _Optional[str] = ..., step: _Optional[int] = ..., keep_fraction: _Optional[float] = ..., task_ids: _Optional[_Iterable[str]] = ..., group_ids: _Optional[_Iterable[str]] = ..., success: _Optional[_Iterable[bool]] = ..., chunk_counts: _Optional[_Iterable[int]] = ..., phase_ids: _Optional[_Iterable[int]] = ..., action_features: _Optional[bytes] = ..., feature_dim: _Optional[int] = ..., trained_masks: _Optional[bytes] = ..., trained_weights: _Optional[bytes] = ...) -> None: ...

class KeepProbs(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class SelectChunksResponse(_message.Message):
    __slots__ = ("selection_id", "state_version", "chunk_counts", "masks", "weights", "kept_chunks", "total_chunks", "skipped_trajectories", "keep_probs", "store_epoch", "staleness", "keep_fraction", "predicted_efficiency", "predicted_rate")
    class KeepProbsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: KeepProbs
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[KeepProbs, _Mapping]] = ...) -> None: ...
    SELECTION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNTS_FIELD_NUMBER: _ClassVar[int]
    MASKS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    KEPT_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_TRAJECTORIES_FIELD_NUMBER: _ClassVar[int]
    KEEP_PROBS_FIELD_NUMBER: _ClassVar[int]
    STORE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    KEEP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_EFFICIENCY_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_RATE_FIELD_NUMBER: _ClassVar[int]
    selection_id: str
    state_version: int
    chunk_counts: _containers.RepeatedScalarFieldContainer[int]
    masks: bytes
    weights: bytes
    kept_chunks: int
    total_chunks: int
    skipped_trajectories: int
    keep_probs: _containers.MessageMap[str, KeepProbs]
    store_epoch: str
    staleness: int
    keep_fraction: float
    predicted_efficiency: float
    predicted_rate: float
    def __init__(self, selection_id: _Optional[str] = ..., state_version: _Optional[int] = ..., chunk_counts: _Optional[_Iterable[int]] = ..., masks: _Optional[bytes] = ..., weights: _Optional[bytes] = ..., kept_chunks: _Optional[int] = ..., total_chunks: _Optional[int] = ..., skipped_trajectories: _Optional[int] = ..., keep_probs: _Optional[_Mapping[str, KeepProbs]] = ..., store_epoch: _Optional[str] = ..., staleness: _Optional[int] = ..., keep_fraction: _Optional[float] = ..., predicted_efficiency: _Optional[float] = ..., predicted_rate: _Optional[float] = ...) -> None: ...

class StageTimings(_message.Message):
    __slots__ = ("rollout_s", "select_s", "backward_s")
    ROLLOUT_S_FIELD_NUMBER: _ClassVar[int]
    SELECT_S_FIELD_NUMBER: _ClassVar[int]
    BACKWARD_S_FIELD_NUMBER: _ClassVar[int]
    rollout_s: float
    select_s: float
    backward_s: float
    def __init__(self, rollout_s: _Optional[float] = ..., select_s: _Optional[float] = ..., backward_s: _Optional[float] = ...) -> None: ...

class ReportOutcomesRequest(_message.Message):
    __slots__ = ("run_id", "selection_id", "request_id", "trainer_id", "step", "success_rate", "loss", "kept_chunks", "timings", "phase_grad_norms")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRAINER_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    KEPT_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    PHASE_GRAD_NORMS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    selection_id: str
    request_id: str
    trainer_id: str
    step: int
    success_rate: float
    loss: float
    kept_chunks: int
    timings: StageTimings
    phase_grad_norms: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, run_id: _Optional[str] = ..., selection_id: _Optional[str] = ..., request_id: _Optional[str] = ..., trainer_id: _Optional[str] = ..., step: _Optional[int] = ..., success_rate: _Optional[float] = ..., loss: _Optional[float] = ..., kept_chunks: _Optional[int] = ..., timings: _Optional[_Union[StageTimings, _Mapping]] = ..., phase_grad_norms: _Optional[_Iterable[float]] = ...) -> None: ...

class ReportOutcomesResponse(_message.Message):
    __slots__ = ("accepted", "store_epoch")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    STORE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    store_epoch: str
    def __init__(self, accepted: _Optional[bool] = ..., store_epoch: _Optional[str] = ...) -> None: ...
