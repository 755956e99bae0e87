"""A submitted rollout batch in flat (ragged) array form, validated.

N trajectories with C_i chunks each, M = sum_i C_i chunks in all. Per-chunk arrays are
concatenated over trajectories; ``offsets[i]:offsets[i+1]`` is trajectory i's slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from pcm_contract.errors import InvalidArgument


@dataclass(frozen=True)
class ChunkBatch:
    task_ids: list[str]  # T distinct tasks, in order of first appearance
    task_index: np.ndarray  # int64 (N,): index into task_ids
    group_index: np.ndarray  # int64 (N,): GRPO group of each trajectory (batch-local)
    success: np.ndarray  # bool (N,)
    lengths: np.ndarray  # int64 (N,): C_i
    offsets: np.ndarray  # int64 (N+1,)
    phase: np.ndarray  # int64 (M,): phi_ic
    features: np.ndarray  # float32 (M, D): x_ic (the canonical dtype, whatever was submitted)
    traj_of_chunk: np.ndarray  # int64 (M,)

    @property
    def num_trajectories(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def num_chunks(self) -> int:
        return int(self.phase.shape[0])

    @classmethod
    def from_trajectories(
        cls,
        task_ids: Sequence[str],
        group_ids: Sequence[str],
        success: Sequence[bool] | np.ndarray,
        phase_ids: Sequence[np.ndarray | Sequence[int]],
        action_features: Sequence[np.ndarray | Sequence[Sequence[float]]],
        num_phases: int,
        feature_dim: int,
    ) -> ChunkBatch:
        """Validate one batch and flatten it. Errors name the field, e.g.
        ``trajectories[3].action_features``."""
        n = len(task_ids)
        if n == 0:
            raise InvalidArgument("trajectories", "the batch is empty; submit at least one")
        for name, seq in (("group_id", group_ids), ("success", success),
                          ("phase_ids", phase_ids), ("action_features", action_features)):
            if len(seq) != n:
                raise InvalidArgument(f"trajectories.{name}",
                                      f"has {len(seq)} entries for {n} trajectories")

        phases_list: list[np.ndarray] = []
        features_list: list[np.ndarray] = []
        for i in range(n):
            phase_i = _as_int_vector(phase_ids[i], f"trajectories[{i}].phase_ids")
            feats_i = _as_float_matrix(action_features[i], f"trajectories[{i}].action_features")
            if phase_i.shape[0] == 0:
                raise InvalidArgument(f"trajectories[{i}].phase_ids",
                                      "a trajectory needs at least one chunk")
            if feats_i.shape[0] != phase_i.shape[0]:
                raise InvalidArgument(
                    f"trajectories[{i}].action_features",
                    f"has {feats_i.shape[0]} rows for {phase_i.shape[0]} phase_ids "
                    "(one feature row per chunk)")
            if feats_i.shape[1] != feature_dim:
                raise InvalidArgument(
                    f"trajectories[{i}].action_features",
                    f"rows have {feats_i.shape[1]} values but the run's feature_dim is "
                    f"{feature_dim}")
            phases_list.append(phase_i)
            features_list.append(feats_i)

        lengths = np.fromiter((p.shape[0] for p in phases_list), dtype=np.int64, count=n)
        phase = np.concatenate(phases_list)
        # One canonical dtype: float32, as trainers produce actions and gRPC carries them, so a
        # batch selects the same whether it came in-process, over gRPC or as JSON numbers.
        features = np.concatenate(features_list, axis=0, dtype=np.float32)
        return cls.from_flat(task_ids, group_ids, success, lengths, phase, features,
                             num_phases=num_phases, feature_dim=feature_dim)

    @classmethod
    def from_flat(
        cls,
        task_ids: Sequence[str],
        group_ids: Sequence[str],
        success: Sequence[bool] | np.ndarray,
        lengths: np.ndarray,
        phase: np.ndarray,
        features: np.ndarray,
        *,
        num_phases: int,
        feature_dim: int,
    ) -> ChunkBatch:
        """Validate a batch that is already flat: per-trajectory ids, outcomes and chunk counts
        C_i (N,), per-chunk phase ids (M,) and feature rows (M, D) concatenated in trajectory
        order (the gRPC message's layout). No per-trajectory copies; errors name the field as
        `from_trajectories` does, e.g. ``trajectories[3].phase_ids``."""
        n = len(task_ids)
        if n == 0:
            raise InvalidArgument("trajectories", "the batch is empty; submit at least one")
        for name, seq in (("group_id", group_ids), ("success", success)):
            if len(seq) != n:
                raise InvalidArgument(f"trajectories.{name}",
                                      f"has {len(seq)} entries for {n} trajectories")
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.shape != (n,):
            raise InvalidArgument("trajectories.phase_ids",
                                  f"has {lengths.shape[0]} entries for {n} trajectories")
        if (lengths <= 0).any():
            raise InvalidArgument(f"trajectories[{int(np.argmax(lengths <= 0))}].phase_ids",
                                  "a trajectory needs at least one chunk")
        m = int(lengths.sum())
        if phase.ndim != 1 or phase.shape[0] != m or features.ndim != 2 or \
                features.shape[0] != m:
            raise InvalidArgument("trajectories", f"phase ids {phase.shape} and feature rows "
                                                  f"{features.shape} do not match the {m} "
                                                  "chunks of the trajectories")
        if features.shape[1] != feature_dim:
            raise InvalidArgument(
                "trajectories[0].action_features",
                f"rows have {features.shape[1]} values but the run's feature_dim is "
                f"{feature_dim}")
        phase = phase.astype(np.int64, copy=False)
        features = features.astype(np.float32, copy=False)

        # Range and finiteness checks on the flat arrays (vectorised), then locate the culprit.
        bad_phase = (phase < 0) | (phase >= num_phases)
        if bad_phase.any():
            i, c = _locate(int(np.argmax(bad_phase)), lengths)
            raise InvalidArgument(f"trajectories[{i}].phase_ids",
                                  f"phase id {int(phase[np.argmax(bad_phase)])} at chunk {c} is "
                                  f"outside [0, {num_phases}) (the run's phases)")
        finite = np.isfinite(features).all(axis=1)
        if not finite.all():
            i, c = _locate(int(np.argmin(finite)), lengths)
            raise InvalidArgument(f"trajectories[{i}].action_features",
                                  f"chunk {c} has a NaN or infinite value (or one beyond "
                                  "float32 range, about 3.4e38)")

        task_index, task_list = _index(task_ids, "task_id")
        group_index, _ = _index(group_ids, "group_id")
        success_arr = np.asarray(success)
        if success_arr.dtype != np.bool_:
            raise InvalidArgument("trajectories.success", "must be booleans")
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(
            task_ids=task_list,
            task_index=task_index,
            group_index=group_index,
            success=success_arr,
            lengths=lengths,
            offsets=offsets,
            phase=phase,
            features=features,
            traj_of_chunk=np.repeat(np.arange(n, dtype=np.int64), lengths),
        )

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        """Split a per-chunk flat array (M, ...) into per-trajectory arrays (views)."""
        ends = self.offsets.tolist()
        return [flat[a:b] for a, b in pairwise(ends)]


def _as_int_vector(value: object, field: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(field, f"must be a list of integers ({exc})") from None
    if arr.ndim != 1:
        raise InvalidArgument(field, f"must be a flat list of integers, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iu":
        raise InvalidArgument(field, f"must hold integers, got {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _as_float_matrix(value: object, field: str) -> np.ndarray:
    if isinstance(value, np.ndarray) and value.dtype in (np.float32, np.float64):
        arr = value
    else:
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (ValueError, TypeError):
            raise InvalidArgument(field, "must be a list of equal-length rows of numbers "
                                         "(ragged rows or non-numbers found)") from None
    if arr.ndim != 2:
        raise InvalidArgument(field, f"must be a 2-D array (chunks x feature_dim), "
                                     f"got shape {arr.shape}")
    return arr


def _index(values: Sequence[str], name: str) -> tuple[np.ndarray, list[str]]:
    table: dict[str, int] = {}
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v:
            raise InvalidArgument(f"trajectories[{i}].{name}", "must be a non-empty string")
        out[i] = table.setdefault(v, len(table))
    return out, list(table)


def _locate(flat_index: int, lengths: np.ndarray) -> tuple[int, int]:
    ends = np.cumsum(lengths)
    i = int(np.searchsorted(ends, flat_index, side="right"))
    start = int(ends[i - 1]) if i > 0 else 0
    return i, flat_index - start
