"""Phase segmenters: map a trajectory's chunks to phase ids in [0, P).

- `progress`: time bins over the episode's step limit, so a chunk's phase is its position in
  the task (chunk c starts at step c*K; phase floor(c*K*P / max_steps)).
- `gripper`: boundaries where the gripper switches open->close and close->open (the semantic
  phases of pick-and-place: approach, carry, release, ...), judged per chunk from the mean of
  its K commands; a chunk's phase is the number of switches up to it, clamped to P-1.
- `env`: the phase ids the environment itself provides, clamped to P-1.
- `paper`: the paper's five gripper phases (arXiv 2605.16154, Sec. 5.1 and App. E.2) from each
  chunk's gripper-close fraction: 0 approach, 1 pre-grasp, 2 active-grip, 3 release-ramp,
  4 tail (`PaperSegmenter`), clamped to P-1.

All return int64 (C,). Use `make_segmenter(name, num_phases)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from trainer_client.types import Trajectory

SEGMENTERS = ("progress", "gripper", "env", "paper")
# what pcm-train takes: the segmenters, and `auto` (gripper phases where the gripper splits the
# run's first batch into at least two phases, else progress bins; `choose_segmenter`)
TRAINER_SEGMENTERS = ("auto", *SEGMENTERS)


class Segmenter(Protocol):
    """Labels the chunks of one trajectory with phase ids in [0, num_phases)."""

    @property
    def name(self) -> str: ...

    @property
    def num_phases(self) -> int: ...

    def __call__(
        self,
        *,
        num_chunks: int,
        chunk_size: int,
        max_steps: int,
        gripper: np.ndarray | None = None,
        env_phase_ids: np.ndarray | None = None,
    ) -> np.ndarray:
        """gripper: (C, K) commands or None; env_phase_ids: (C,) or None. Returns int64 (C,)."""
        ...


def _gripper_commands(name: str, gripper: np.ndarray | None, num_chunks: int,
                      chunk_size: int) -> np.ndarray:
    """The (C, K) gripper commands as float64, checked; ValueError naming the segmenter."""
    if gripper is None:
        raise ValueError(f"{name} segmenter needs the gripper commands (gripper=None)")
    g = np.asarray(gripper, dtype=np.float64)
    if g.shape != (num_chunks, chunk_size):
        raise ValueError(
            f"gripper must have shape (C, K) = ({num_chunks}, {chunk_size}), got {g.shape}"
        )
    return g


def _check_common(num_phases: int) -> int:
    if int(num_phases) < 1:
        raise ValueError(f"num_phases must be >= 1, got {num_phases}")
    return int(num_phases)


@dataclass(frozen=True)
class ProgressSegmenter:
    """Phase = time bin of the chunk's first step over the episode's step limit."""

    num_phases: int
    name: str = "progress"

    def __post_init__(self) -> None:
        _check_common(self.num_phases)

    def __call__(
        self,
        *,
        num_chunks: int,
        chunk_size: int,
        max_steps: int,
        gripper: np.ndarray | None = None,
        env_phase_ids: np.ndarray | None = None,
    ) -> np.ndarray:
        if max_steps < 1 or chunk_size < 1 or num_chunks < 0:
            raise ValueError(
                f"need max_steps >= 1, chunk_size >= 1, num_chunks >= 0; got "
                f"{max_steps}, {chunk_size}, {num_chunks}"
            )
        starts = np.arange(num_chunks, dtype=np.int64) * chunk_size
        phases = (starts * self.num_phases) // max_steps
        return np.minimum(phases, self.num_phases - 1).astype(np.int64)


@dataclass(frozen=True)
class GripperSegmenter:
    """Phase = number of gripper open/close switches so far, at chunk resolution.

    A chunk counts as closed when the mean of its K gripper commands is > `threshold`
    (averaging filters the per-action flicker of a sampled policy); a switch is a change of
    that state which then holds for `min_hold` chunks or until the trajectory ends (so a
    one-chunk blip of a sampled policy is no boundary; min_hold=1 counts every change). A
    chunk's phase is the number of switches up to and including it (the chunk where the
    gripper closes starts the next phase), clamped to P-1. The gripper starts open unless
    `start_closed`.
    """

    num_phases: int
    threshold: float = 0.0
    min_hold: int = 2
    start_closed: bool = False
    name: str = "gripper"

    def __post_init__(self) -> None:
        _check_common(self.num_phases)
        if self.min_hold < 1:
            raise ValueError(f"min_hold must be >= 1, got {self.min_hold}")

    def closed(self, gripper: np.ndarray) -> np.ndarray:
        """gripper: (C, K) commands -> bool (C,): chunk counts as closed."""
        return np.asarray(gripper, dtype=np.float64).mean(axis=1) > self.threshold

    def switches(self, closed: np.ndarray) -> np.ndarray:
        """closed: bool (C,) per-chunk gripper state -> int64 (C,): accepted switches up to and
        including each chunk."""
        closed = np.asarray(closed, dtype=bool).reshape(-1)
        count = np.zeros(closed.shape[0], dtype=np.int64)
        state = self.start_closed
        n = 0
        for c in range(closed.shape[0]):
            if closed[c] != state:
                run = closed[c : c + self.min_hold]  # shorter only at the trajectory's end
                if np.all(run != state):
                    state = bool(closed[c])
                    n += 1
            count[c] = n
        return count

    def __call__(
        self,
        *,
        num_chunks: int,
        chunk_size: int,
        max_steps: int,
        gripper: np.ndarray | None = None,
        env_phase_ids: np.ndarray | None = None,
    ) -> np.ndarray:
        g = _gripper_commands(self.name, gripper, num_chunks, chunk_size)
        if num_chunks == 0:
            return np.zeros(0, dtype=np.int64)
        counts = self.switches(self.closed(g))
        return np.minimum(counts, self.num_phases - 1).astype(np.int64)


@dataclass(frozen=True)
class EnvSegmenter:
    """Phase = the env-provided phase id, clamped to num_phases - 1."""

    num_phases: int
    name: str = "env"

    def __post_init__(self) -> None:
        _check_common(self.num_phases)

    def __call__(
        self,
        *,
        num_chunks: int,
        chunk_size: int,
        max_steps: int,
        gripper: np.ndarray | None = None,
        env_phase_ids: np.ndarray | None = None,
    ) -> np.ndarray:
        if env_phase_ids is None:
            raise ValueError(
                "env segmenter needs env-provided phase ids, but this env provides none; "
                "use 'progress' or 'gripper'"
            )
        ids = np.asarray(env_phase_ids)
        if ids.shape != (num_chunks,):
            raise ValueError(f"env_phase_ids must have shape ({num_chunks},), got {ids.shape}")
        if ids.size and int(ids.min()) < 0:
            raise ValueError(f"env_phase_ids must be >= 0, got min {int(ids.min())}")
        return np.minimum(ids.astype(np.int64), self.num_phases - 1)


@dataclass(frozen=True)
class PaperSegmenter:
    """The paper's five phases from the per-chunk gripper-close fraction gf (the share of the
    chunk's K commands above `threshold`): sustained-close intervals are maximal runs of chunks
    with gf >= 0.75; active-grip: gf >= 0.5; pre-grasp: up to three chunks right before a
    sustained interval with 0.1 <= gf < 0.5; release-ramp: up to three chunks right after one
    with gf < 0.5; tail: chunks after the last interval's release-ramp window with gf < 0.5;
    approach: every other chunk (before a grasp, or where the gripper never closes). Overlaps
    resolve by active-grip > pre-grasp > release-ramp > approach > tail."""

    num_phases: int = 5
    threshold: float = 0.0
    name: str = "paper"

    APPROACH, PRE_GRASP, ACTIVE_GRIP, RELEASE_RAMP, TAIL = range(5)
    SUSTAINED, ACTIVE, PARTIAL, WINDOW = 0.75, 0.5, 0.1, 3

    def __post_init__(self) -> None:
        _check_common(self.num_phases)

    def labels(self, close_fraction: np.ndarray) -> np.ndarray:
        """gf (C,) in [0, 1] -> int64 (C,) phase labels 0..4."""
        gf = np.asarray(close_fraction, dtype=np.float64)
        c = gf.shape[0]
        sustained = gf >= self.SUSTAINED
        starts = np.flatnonzero(sustained & ~np.r_[False, sustained[:-1]])
        ends = np.flatnonzero(sustained & ~np.r_[sustained[1:], False])  # inclusive
        label = np.full(c, self.APPROACH, dtype=np.int64)
        if starts.size:  # tail first: every higher-priority rule overwrites it
            after = np.arange(c) > min(ends[-1] + self.WINDOW, c - 1)
            label[after & (gf < self.ACTIVE)] = self.TAIL
        for end in ends[::-1]:
            ramp = np.arange(end + 1, min(end + 1 + self.WINDOW, c))
            ramp = ramp[gf[ramp] < self.ACTIVE]
            label[ramp] = self.RELEASE_RAMP
        for start in starts[::-1]:
            pre = np.arange(max(start - self.WINDOW, 0), start)
            pre = pre[(gf[pre] >= self.PARTIAL) & (gf[pre] < self.ACTIVE)]
            label[pre] = self.PRE_GRASP
        label[gf >= self.ACTIVE] = self.ACTIVE_GRIP
        return label

    def __call__(
        self,
        *,
        num_chunks: int,
        chunk_size: int,
        max_steps: int,
        gripper: np.ndarray | None = None,
        env_phase_ids: np.ndarray | None = None,
    ) -> np.ndarray:
        g = _gripper_commands(self.name, gripper, num_chunks, chunk_size)
        labels = self.labels((g > self.threshold).mean(axis=1)) if num_chunks else np.zeros(
            0, dtype=np.int64)
        return np.minimum(labels, self.num_phases - 1).astype(np.int64)


def make_segmenter(name: str, num_phases: int, **kw: Any) -> Segmenter:
    """Build a segmenter by name ('progress' | 'gripper' | 'env' | 'paper'). `kw` goes to the
    gripper segmenter (threshold, min_hold, start_closed) and the paper's (threshold); the
    others take none."""
    if name == "progress":
        if kw:
            raise ValueError(f"progress segmenter takes no options, got {sorted(kw)}")
        return ProgressSegmenter(num_phases)
    elif name == "gripper":
        return GripperSegmenter(num_phases, **kw)
    elif name == "env":
        if kw:
            raise ValueError(f"env segmenter takes no options, got {sorted(kw)}")
        return EnvSegmenter(num_phases)
    elif name == "paper":
        unknown = set(kw) - {"threshold"}
        if unknown:
            raise ValueError(f"paper segmenter takes only threshold, got {sorted(unknown)}")
        return PaperSegmenter(num_phases, **kw)
    else:
        raise ValueError(f"unknown segmenter {name!r}; known: {', '.join(SEGMENTERS)}")


def choose_segmenter(chunks_per_gripper_phase: np.ndarray) -> tuple[str, str]:
    """The `auto` segmenter's choice from the first batch's chunk count per gripper phase (P,):
    `gripper` where at least two phases hold chunks, else `progress` (the gripper never switched,
    e.g. a pushing task: one phase would make the phase scores a single number). Returns the
    name and the reason, for the log."""
    populated = int(np.count_nonzero(chunks_per_gripper_phase))
    if populated >= 2:
        return "gripper", f"the gripper splits the first batch into {populated} phases"
    return "progress", (f"the gripper gives the first batch {populated} phase; progress bins "
                        "instead")


def phase_counts(trajectories: Sequence[Trajectory], num_phases: int) -> np.ndarray:
    """(P,) chunks per phase over the trajectories' current labels."""
    counts = np.zeros(num_phases)
    for t in trajectories:
        counts += np.bincount(t.phase_ids, minlength=num_phases)[:num_phases]
    return counts


def relabel(trajectories: Sequence[Trajectory], name: str, num_phases: int,
            max_steps: int) -> None:
    """Label the trajectories' chunks anew with segmenter `name` (in place)."""
    seg = make_segmenter(name, num_phases)
    for t in trajectories:
        t.phase_ids = label_trajectory(seg, t, max_steps)


def label_trajectory(segmenter: Segmenter, traj: Trajectory, max_steps: int) -> np.ndarray:
    """Phase ids (C,) of an existing trajectory under `segmenter` (e.g. to relabel)."""
    return segmenter(
        num_chunks=traj.num_chunks,
        chunk_size=int(traj.actions.shape[1]),
        max_steps=max_steps,
        gripper=traj.gripper,
        env_phase_ids=traj.env_phase_ids,
    )
