"""Per-(run, task) phase state: online scores and counters. Plain data, JSON-serialisable."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class TaskState:
    """State of one task of a run, over its P phases."""

    scores: np.ndarray  # float64 (P,): s_tp, NaN until phase p is first observed
    observations: np.ndarray  # int64 (P,): batches in which v_tp was observed
    chunks_total: np.ndarray  # int64 (P,): chunks submitted in phase p
    chunks_kept: np.ndarray  # int64 (P,): chunks selected for backward in phase p
    trajectories: int = 0
    skipped_trajectories: int = 0
    version: int = 0  # batches that touched this task
    # score `signal` only: R_tp (P, D), the EMA of earlier batches' mean group phase sums
    # (core/signal.py); NaN rows for phases without one; None until the first such batch
    signal_ref: np.ndarray | None = None
    # score_window T >= 1 only: the evidence of the batches since the last refresh, summed
    # (P,) and counted (P,), and how many batches that is; None: an empty window
    window_sum: np.ndarray | None = None
    window_count: np.ndarray | None = None
    window_batches: int = 0

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        """(window_sum, window_count) as arrays, zeros for an empty window."""
        p = self.num_phases
        return (np.zeros(p) if self.window_sum is None else self.window_sum,
                np.zeros(p, dtype=np.int64) if self.window_count is None
                else self.window_count)

    @classmethod
    def empty(cls, num_phases: int) -> TaskState:
        return cls(
            scores=np.full(num_phases, np.nan),
            observations=np.zeros(num_phases, dtype=np.int64),
            chunks_total=np.zeros(num_phases, dtype=np.int64),
            chunks_kept=np.zeros(num_phases, dtype=np.int64),
        )

    @property
    def num_phases(self) -> int:
        return int(self.scores.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": [None if math.isnan(s) else float(s) for s in self.scores],
            "observations": self.observations.tolist(),
            "chunks_total": self.chunks_total.tolist(),
            "chunks_kept": self.chunks_kept.tolist(),
            "trajectories": self.trajectories,
            "skipped_trajectories": self.skipped_trajectories,
            "version": self.version,
            "signal_ref": None if self.signal_ref is None else [
                None if math.isnan(row[0]) else row.tolist() for row in self.signal_ref],
            **({} if self.window_batches == 0 and self.window_sum is None else {
                "window_sum": self.window()[0].tolist(),
                "window_count": self.window()[1].tolist(),
                "window_batches": self.window_batches}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskState:
        return cls(
            scores=np.array([np.nan if s is None else s for s in data["scores"]], dtype=float),
            observations=np.asarray(data["observations"], dtype=np.int64),
            chunks_total=np.asarray(data["chunks_total"], dtype=np.int64),
            chunks_kept=np.asarray(data["chunks_kept"], dtype=np.int64),
            trajectories=int(data["trajectories"]),
            skipped_trajectories=int(data["skipped_trajectories"]),
            version=int(data["version"]),
            signal_ref=_signal_ref_from(data.get("signal_ref")),
            window_sum=(None if data.get("window_sum") is None
                        else np.asarray(data["window_sum"], dtype=np.float64)),
            window_count=(None if data.get("window_count") is None
                          else np.asarray(data["window_count"], dtype=np.int64)),
            window_batches=int(data.get("window_batches", 0)),
        )

    def equals(self, other: TaskState) -> bool:
        return (np.array_equal(self.scores, other.scores, equal_nan=True)
                and np.array_equal(self.observations, other.observations)
                and np.array_equal(self.chunks_total, other.chunks_total)
                and np.array_equal(self.chunks_kept, other.chunks_kept)
                and (self.trajectories, self.skipped_trajectories, self.version)
                == (other.trajectories, other.skipped_trajectories, other.version)
                and (self.signal_ref is None) == (other.signal_ref is None)
                and (self.signal_ref is None or other.signal_ref is None
                     or np.array_equal(self.signal_ref, other.signal_ref, equal_nan=True))
                and self.window_batches == other.window_batches
                and all(np.array_equal(a, b) for a, b in zip(self.window(), other.window(),
                                                              strict=True)))


def _signal_ref_from(rows: list[list[float] | None] | None) -> np.ndarray | None:
    if rows is None:
        return None
    dim = next((len(r) for r in rows if r is not None), 1)
    return np.array([[np.nan] * dim if r is None else r for r in rows], dtype=np.float64)
