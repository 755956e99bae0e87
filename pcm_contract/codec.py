"""Conversions between the protobuf messages of `pcm.v1` and the pydantic models.

Both directions live here: the gRPC server uses `*_from_proto` for requests and `*_to_proto`
for answers; a gRPC client uses the converse. A Select batch travels flat (see
protos/pcm/v1/selector.proto): per-trajectory lists, per-chunk `phase_ids`, features as float32
little-endian bytes, masks as one byte per chunk, weights as float64 little-endian bytes.

Malformed arrays raise `InvalidArgument` naming the proto field; the rest of the validation
(limits, NaN, phase range, feature_dim) is the models' and the core's, whose messages name
`trajectories[i].FIELD`.

Features stay float32: the core computes on float32 whatever the transport (JSON numbers and
float64 arrays are cast to it), so a batch scores the same over gRPC, HTTP and embedded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import ValidationError

from pcm_contract.errors import InvalidArgument, invalid_from_validation
from pcm_contract.gen.pcm.v1 import selector_pb2 as pb
from pcm_contract.models import (
    MAX_TRAJECTORIES,
    FlatSelect,
    OutcomeReport,
    RunConfigOut,
    RunInfo,
    SelectRequest,
    SelectResponse,
    TaskStateOut,
)
from pcm_contract.run_config import RUN_CONFIG_FIELDS

DEFAULT_TRAINER = "trainer"

# ---------------------------------------------------------------------------------------------
# Runs


def run_config_changes(config: pb.RunConfig) -> dict[str, Any]:
    """The fields set in a PutRun config (unset fields keep their stored value)."""
    return {name: getattr(config, name) for name in RUN_CONFIG_FIELDS if config.HasField(name)}


def run_config_to_proto(config: Mapping[str, Any]) -> pb.RunConfig:
    return pb.RunConfig(**{k: v for k, v in config.items() if k in RUN_CONFIG_FIELDS
                           and v is not None})


def run_info_to_proto(info: RunInfo) -> pb.RunInfo:
    out = pb.RunInfo(run_id=info.run_id, config=run_config_to_proto(info.config.model_dump()),
                     state_version=info.state_version, outcome_reports=info.outcome_reports,
                     store_epoch=info.store_epoch)
    for task_id, state in info.tasks.items():
        out.tasks[task_id].CopyFrom(pb.TaskState(
            scores=[math.nan if s is None else s for s in state.scores],
            keep_probs=state.keep_probs,
            observations=state.observations,
            chunks_total=state.chunks_total,
            chunks_kept=state.chunks_kept,
            trajectories=state.trajectories,
            skipped_trajectories=state.skipped_trajectories,
            state_version=state.state_version,
        ))
    return out


def run_info_from_proto(info: pb.RunInfo) -> RunInfo:
    tasks = {}
    for task_id in sorted(info.tasks):
        state = info.tasks[task_id]
        tasks[task_id] = TaskStateOut(
            scores=[None if math.isnan(s) else s for s in state.scores],
            keep_probs=list(state.keep_probs),
            observations=list(state.observations),
            chunks_total=list(state.chunks_total),
            chunks_kept=list(state.chunks_kept),
            trajectories=state.trajectories,
            skipped_trajectories=state.skipped_trajectories,
            state_version=state.state_version,
        )
    config = {name: getattr(info.config, name) for name in RUN_CONFIG_FIELDS}
    return RunInfo(run_id=info.run_id, config=RunConfigOut(**config),
                   state_version=info.state_version, outcome_reports=info.outcome_reports,
                   tasks=tasks, store_epoch=info.store_epoch)


# ---------------------------------------------------------------------------------------------
# Select


def select_flat_from_proto(msg: pb.SelectChunksRequest) -> FlatSelect:
    """A SelectChunks request as the flat arrays the application layer computes on (no
    per-trajectory split; raises InvalidArgument naming the proto field for malformed arrays,
    the rest is `FlatSelect.check` and the core's)."""
    n = len(msg.task_ids)
    if n > MAX_TRAJECTORIES:
        raise InvalidArgument("task_ids", f"{n} trajectories, over the limit of "
                                          f"{MAX_TRAJECTORIES} per request; split the batch")
    for name in ("group_ids", "success", "chunk_counts"):
        got = len(getattr(msg, name))
        if got != n:
            raise InvalidArgument(name, f"has {got} entries for {n} trajectories (task_ids)")
    # np.array reads a repeated scalar field in one call (np.fromiter goes value by value)
    counts = np.array(msg.chunk_counts, dtype=np.int64).reshape(n)
    if n and counts.min() < 0:
        raise InvalidArgument("chunk_counts", f"entry {int(np.argmin(counts))} is negative")
    m = int(counts.sum())
    if len(msg.phase_ids) != m:
        raise InvalidArgument("phase_ids", f"has {len(msg.phase_ids)} entries but chunk_counts "
                                           f"sum to {m} chunks")
    features = _features(msg.action_features, m, msg.feature_dim)
    mask = weight = None
    if msg.trained_masks or msg.trained_weights:
        mask, weight = _trained(msg.trained_masks, msg.trained_weights, m)
    return FlatSelect(
        request_id=msg.request_id, trainer_id=msg.trainer_id or DEFAULT_TRAINER, step=msg.step,
        keep_fraction=msg.keep_fraction if msg.HasField("keep_fraction") else None,
        task_ids=list(msg.task_ids), group_ids=list(msg.group_ids),
        success=np.array(msg.success, dtype=bool).reshape(n), lengths=counts,
        phase=np.array(msg.phase_ids, dtype=np.int64).reshape(m), features=features,
        trained_mask=mask, trained_weight=weight)


def select_request_from_proto(msg: pb.SelectChunksRequest) -> SelectRequest:
    """Unflatten and validate a SelectChunks request into the request model (raises
    InvalidArgument); the server itself uses `select_flat_from_proto`."""
    flat = select_flat_from_proto(msg)
    ends = np.cumsum(flat.lengths).tolist()
    spans = list(zip([0, *ends[:-1]], ends, strict=True))
    trajectories = [
        {"task_id": flat.task_ids[i], "group_id": flat.group_ids[i],
         "success": bool(flat.success[i]), "phase_ids": flat.phase[a:b],
         "action_features": flat.features[a:b]}
        for i, (a, b) in enumerate(spans)
    ]
    body: dict[str, Any] = {"request_id": flat.request_id, "trainer_id": flat.trainer_id,
                            "step": flat.step, "trajectories": trajectories}
    if flat.keep_fraction is not None:
        body["keep_fraction"] = flat.keep_fraction
    if flat.trained_mask is not None and flat.trained_weight is not None:
        body["trained_masks"] = [flat.trained_mask[a:b] for a, b in spans]
        body["trained_weights"] = [flat.trained_weight[a:b] for a, b in spans]
    try:
        return SelectRequest.model_validate(body)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None


def _features(data: bytes, m: int, feature_dim: int) -> np.ndarray:
    if len(data) % 4:
        raise InvalidArgument("action_features", f"byte length {len(data)} is not a multiple "
                                                 "of 4 (little-endian float32 values)")
    values = len(data) // 4
    if feature_dim < 0:
        raise InvalidArgument("feature_dim", f"must not be negative, got {feature_dim}")
    if feature_dim == 0:
        if m == 0 or values % m:
            raise InvalidArgument("action_features", f"{values} float32 values do not split "
                                                     f"into {m} equal rows (one per chunk)")
        feature_dim = values // m
    if values != m * feature_dim:
        raise InvalidArgument("action_features", f"has {values} float32 values, expected "
                                                 f"{m} chunks x feature_dim {feature_dim} = "
                                                 f"{m * feature_dim}")
    if feature_dim == 0:
        raise InvalidArgument("feature_dim", "rows must have at least one value")
    flat = np.frombuffer(data, dtype="<f4")
    return flat.astype(np.float32, copy=False).reshape(m, feature_dim)


def _trained(masks: bytes, weights: bytes, m: int) -> tuple[np.ndarray, np.ndarray]:
    if len(masks) != m:
        raise InvalidArgument("trained_masks", f"has {len(masks)} bytes for {m} chunks "
                                               "(one byte per chunk, 0 or 1)")
    if len(weights) != 8 * m:
        raise InvalidArgument("trained_weights", f"has {len(weights)} bytes for {m} chunks "
                                                 "(little-endian float64 per chunk)")
    raw = np.frombuffer(masks, dtype=np.uint8)
    if (raw > 1).any():
        raise InvalidArgument("trained_masks", "bytes must be 0 or 1")
    return raw.astype(bool), np.frombuffer(weights, dtype="<f8").astype(np.float64)


def select_request_to_proto(run_id: str, request: SelectRequest) -> pb.SelectChunksRequest:
    """Flatten a (validated) SelectRequest for the wire; features are sent as float32."""
    trajs = request.trajectories
    phases = (np.concatenate([t.phase_ids for t in trajs]) if trajs
              else np.zeros(0, dtype=np.int64))
    feats = [np.asarray(t.action_features) for t in trajs]
    widths = {f.shape[1] for f in feats}
    # ragged widths: feature_dim 0, and the server names the offending trajectory
    feature_dim = widths.pop() if len(widths) == 1 else 0
    # one copy, straight from each trajectory's float32 rows into the bytes
    data = b"".join(np.ascontiguousarray(f, dtype="<f4").data for f in feats)
    msg = pb.SelectChunksRequest(
        run_id=run_id, request_id=request.request_id, trainer_id=request.trainer_id,
        step=request.step,
        task_ids=[t.task_id for t in trajs], group_ids=[t.group_id for t in trajs],
        success=[bool(t.success) for t in trajs],
        chunk_counts=[int(t.phase_ids.shape[0]) for t in trajs],
        phase_ids=phases.astype(np.int32).tolist(),
        action_features=data, feature_dim=feature_dim)
    if request.keep_fraction is not None:
        msg.keep_fraction = request.keep_fraction
    if request.trained_masks is not None and request.trained_weights is not None:
        msg.trained_masks = _concat(request.trained_masks, np.uint8).tobytes()
        msg.trained_weights = _concat(request.trained_weights, "<f8").tobytes()
    return msg


def _concat(arrays: list[np.ndarray], dtype: Any) -> np.ndarray:
    if not arrays:
        return np.zeros(0, dtype=dtype)
    return np.ascontiguousarray(np.concatenate(arrays), dtype=dtype)


def select_response_to_proto(answer: SelectResponse) -> pb.SelectChunksResponse:
    counts = [int(m.shape[0]) for m in answer.masks]
    masks = np.concatenate(answer.masks) if answer.masks else np.zeros(0, dtype=bool)
    weights = np.concatenate(answer.weights) if answer.weights else np.zeros(0)
    out = pb.SelectChunksResponse(
        selection_id=answer.selection_id, state_version=answer.state_version,
        chunk_counts=counts, masks=masks.astype(np.uint8).tobytes(),
        weights=np.ascontiguousarray(weights, dtype="<f8").tobytes(),
        kept_chunks=answer.kept_chunks, total_chunks=answer.total_chunks,
        skipped_trajectories=answer.skipped_trajectories, store_epoch=answer.store_epoch,
        staleness=answer.staleness, keep_fraction=answer.keep_fraction,
        predicted_efficiency=answer.predicted_efficiency,
        predicted_rate=answer.predicted_rate)
    for task_id, probs in answer.keep_probs.items():
        out.keep_probs[task_id].values.extend(probs)
    return out


def select_response_from_proto(msg: pb.SelectChunksResponse) -> SelectResponse:
    counts = np.fromiter(msg.chunk_counts, dtype=np.int64, count=len(msg.chunk_counts))
    splits = np.cumsum(counts)[:-1]
    masks = np.frombuffer(msg.masks, dtype=np.uint8).astype(bool)
    weights = np.frombuffer(msg.weights, dtype="<f8").astype(np.float64)
    for arr in (masks, weights):
        arr.flags.writeable = False
    return SelectResponse(
        selection_id=msg.selection_id, state_version=msg.state_version,
        masks=np.split(masks, splits), weights=np.split(weights, splits),
        kept_chunks=msg.kept_chunks, total_chunks=msg.total_chunks,
        skipped_trajectories=msg.skipped_trajectories,
        keep_probs={t: list(msg.keep_probs[t].values) for t in msg.keep_probs},
        store_epoch=msg.store_epoch, staleness=max(0, msg.staleness),
        keep_fraction=msg.keep_fraction,
        predicted_efficiency=(msg.predicted_efficiency if msg.HasField("predicted_efficiency")
                              else None),
        predicted_rate=msg.predicted_rate if msg.HasField("predicted_rate") else None)


# ---------------------------------------------------------------------------------------------
# Outcomes


def outcome_report_from_proto(msg: pb.ReportOutcomesRequest) -> dict[str, Any]:
    """The report as the dict the application layer validates (`OutcomeReport`)."""
    body: dict[str, Any] = {
        "selection_id": msg.selection_id, "request_id": msg.request_id,
        "trainer_id": msg.trainer_id or DEFAULT_TRAINER, "step": msg.step,
        "success_rate": msg.success_rate, "loss": msg.loss, "kept_chunks": msg.kept_chunks,
        "timings": {"rollout_s": msg.timings.rollout_s, "select_s": msg.timings.select_s,
                    "backward_s": msg.timings.backward_s},
    }
    if len(msg.phase_grad_norms):
        body["phase_grad_norms"] = list(msg.phase_grad_norms)
    return body


def outcome_report_to_proto(run_id: str, report: OutcomeReport) -> pb.ReportOutcomesRequest:
    t = report.timings
    return pb.ReportOutcomesRequest(
        run_id=run_id, selection_id=report.selection_id, request_id=report.request_id,
        trainer_id=report.trainer_id, step=report.step, success_rate=report.success_rate,
        loss=report.loss, kept_chunks=report.kept_chunks,
        timings=pb.StageTimings(rollout_s=t.rollout_s, select_s=t.select_s,
                                backward_s=t.backward_s),
        phase_grad_norms=report.phase_grad_norms or [])
