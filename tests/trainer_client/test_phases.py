"""Phase segmenters on synthetic inputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from trainer_client.phases import (
    EnvSegmenter,
    GripperSegmenter,
    ProgressSegmenter,
    choose_segmenter,
    label_trajectory,
    make_segmenter,
)
from trainer_client.types import Trajectory


def test_progress_bins() -> None:
    seg = make_segmenter("progress", 4)
    # max 120 steps, K 8: chunk starts 0, 8, ..., 112 -> bins of 30 steps
    phases = seg(num_chunks=15, chunk_size=8, max_steps=120)
    assert phases.dtype == np.int64
    np.testing.assert_array_equal(phases, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3])
    # a short (early-success) episode only covers the first bins
    np.testing.assert_array_equal(seg(num_chunks=3, chunk_size=8, max_steps=120), [0, 0, 0])
    # more chunks than the limit covers are clamped to P - 1
    np.testing.assert_array_equal(seg(num_chunks=3, chunk_size=8, max_steps=10), [0, 3, 3])
    assert seg(num_chunks=0, chunk_size=8, max_steps=10).shape == (0,)
    np.testing.assert_array_equal(
        make_segmenter("progress", 1)(num_chunks=4, chunk_size=8, max_steps=32), [0, 0, 0, 0]
    )


def _chunks(seq: Sequence[float], k: int) -> np.ndarray:
    return np.asarray(seq, dtype=np.float32).reshape(-1, k)


OPEN, CLOSED = [-1.0] * 4, [1.0] * 4  # one K=4 chunk of commands


def _phases(seg: GripperSegmenter, chunks: list[list[float]]) -> list[int]:
    g = np.asarray(chunks, dtype=np.float32)
    return seg(num_chunks=g.shape[0], chunk_size=g.shape[1], max_steps=100, gripper=g).tolist()


def test_gripper_boundaries_pick_and_place() -> None:
    seg = GripperSegmenter(4, min_hold=1)
    # approach (open), carry (closed), release (open)
    chunks = [OPEN, OPEN, CLOSED, CLOSED, CLOSED, OPEN, OPEN]
    assert _phases(seg, chunks) == [0, 0, 1, 1, 1, 2, 2]
    # a chunk is closed when its mean command is above the threshold
    assert _phases(seg, [OPEN, [-1, 1, 1, 1], CLOSED]) == [0, 1, 1]
    assert _phases(seg, [OPEN, [-1, -1, 1, 1], CLOSED]) == [0, 0, 1]


def test_gripper_clamp() -> None:
    seg = GripperSegmenter(2, min_hold=1)
    # a switch at every chunk: counts 0, 1, 2, 3 -> clamped to P - 1 = 1
    assert _phases(seg, [OPEN, CLOSED, OPEN, CLOSED]) == [0, 1, 1, 1]


def test_gripper_threshold_and_start_state() -> None:
    # MetaWorld experts: 0 = open, 0.6..1 = closed
    chunks = [[0.0] * 4, [0.6] * 4, [0.0] * 4]
    assert _phases(GripperSegmenter(4, threshold=0.0, min_hold=1), chunks) == [0, 1, 2]
    # threshold above every command: always open, no switch
    assert _phases(GripperSegmenter(4, threshold=0.7), chunks) == [0, 0, 0]
    # starting closed: the first open chunk is a switch
    assert _phases(GripperSegmenter(4, threshold=0.3, min_hold=1, start_closed=True), chunks) == [
        1, 2, 3,
    ]  # fmt: skip


def test_gripper_debounce() -> None:
    chunks = [OPEN, CLOSED, OPEN, OPEN, CLOSED, CLOSED, CLOSED]
    assert _phases(GripperSegmenter(4, min_hold=1), chunks) == [0, 1, 2, 2, 3, 3, 3]
    # default min_hold=2 ignores the one-chunk blip
    assert _phases(GripperSegmenter(4), chunks) == [0, 0, 0, 0, 1, 1, 1]
    # a change in the last chunk counts (it holds until the end)
    assert _phases(GripperSegmenter(4), [OPEN, OPEN, CLOSED]) == [0, 0, 1]
    assert _phases(GripperSegmenter(4), [OPEN, CLOSED, OPEN]) == [0, 0, 0]
    # per-action flicker inside a chunk is averaged away
    assert _phases(GripperSegmenter(4, min_hold=1), [OPEN, [-1, 1, -1, -1], OPEN]) == [0, 0, 0]
    seg = GripperSegmenter(4)
    assert seg.switches(seg.closed(np.asarray([OPEN, CLOSED, CLOSED]))).tolist() == [0, 1, 1]


def test_env_segmenter_clamps() -> None:
    seg = make_segmenter("env", 3)
    ids = np.array([0, 1, 2, 5, 1])
    np.testing.assert_array_equal(
        seg(num_chunks=5, chunk_size=8, max_steps=40, env_phase_ids=ids), [0, 1, 2, 2, 1]
    )
    with pytest.raises(ValueError, match="provides none"):
        seg(num_chunks=5, chunk_size=8, max_steps=40, env_phase_ids=None)
    with pytest.raises(ValueError, match=">= 0"):
        seg(num_chunks=2, chunk_size=8, max_steps=40, env_phase_ids=np.array([0, -1]))
    with pytest.raises(ValueError, match="shape"):
        seg(num_chunks=3, chunk_size=8, max_steps=40, env_phase_ids=np.array([0, 1]))


def test_segmenter_errors() -> None:
    with pytest.raises(ValueError, match="unknown segmenter 'time'"):
        make_segmenter("time", 4)
    with pytest.raises(ValueError, match="num_phases"):
        make_segmenter("progress", 0)
    with pytest.raises(ValueError, match="num_phases"):
        make_segmenter("gripper", -1)
    with pytest.raises(ValueError, match="min_hold"):
        make_segmenter("gripper", 4, min_hold=0)
    with pytest.raises(ValueError, match="no options"):
        make_segmenter("progress", 4, threshold=0.5)
    with pytest.raises(ValueError, match="no options"):
        make_segmenter("env", 4, threshold=0.5)
    gseg = make_segmenter("gripper", 4)
    with pytest.raises(ValueError, match="gripper=None"):
        gseg(num_chunks=2, chunk_size=4, max_steps=8)
    with pytest.raises(ValueError, match="shape"):
        gseg(num_chunks=2, chunk_size=4, max_steps=8, gripper=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="max_steps"):
        ProgressSegmenter(4)(num_chunks=2, chunk_size=4, max_steps=0)
    assert isinstance(make_segmenter("env", 2), EnvSegmenter)


def test_label_trajectory() -> None:
    c, k, a = 3, 4, 2
    traj = Trajectory(
        task_id="t",
        group_id="t/init0/step0",
        instruction="do it",
        obs={"state": np.zeros((c, 5), np.float32)},
        actions=np.zeros((c, k, a), np.float32),
        old_logp=np.zeros(c, np.float32),
        phase_ids=np.zeros(c, np.int64),
        success=False,
        num_steps=c * k,
        gripper=_chunks([-1] * 5 + [1] * 7, k),
        env_phase_ids=np.array([0, 1, 1]),
    )
    assert label_trajectory(make_segmenter("gripper", 4), traj, 12).tolist() == [0, 1, 1]
    assert label_trajectory(make_segmenter("progress", 3), traj, 12).tolist() == [0, 1, 2]
    assert label_trajectory(make_segmenter("env", 4), traj, 12).tolist() == [0, 1, 1]


def test_auto_takes_the_gripper_only_where_it_splits_the_batch() -> None:
    assert choose_segmenter(np.array([120, 40, 0, 0]))[0] == "gripper"
    name, why = choose_segmenter(np.array([160, 0, 0, 0]))
    assert name == "progress" and "1 phase" in why
    assert choose_segmenter(np.zeros(4))[0] == "progress"


def test_paper_phases_follow_the_gripper_close_fraction() -> None:
    seg = make_segmenter("paper", 5)
    a, pre, grip, ramp, tail = range(5)
    # approach, a partial close, a sustained grasp, the release, then the open gripper
    gf = np.array([0.0, 0.0, 0.0, 0.0, 0.25, 0.375, 1.0, 1.0, 0.875, 0.25, 0.0, 0.0, 0.0, 0.0,
                   0.0])
    assert seg.labels(gf).tolist() == [a, a, a, a, pre, pre, grip, grip, grip, ramp, ramp, ramp,
                                       tail, tail, tail]
    # the gripper never closes: all approach; a partial close with no sustained one: approach
    assert seg.labels(np.zeros(6)).tolist() == [a] * 6
    assert seg.labels(np.array([0.0, 0.3, 0.0])).tolist() == [a] * 3
    # two grasp cycles: open chunks between them are approach, only after the last one tail
    gf2 = np.array([0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    labels = seg.labels(gf2).tolist()
    assert labels == [a, grip, ramp, ramp, ramp, a, a, pre, grip, grip, ramp, ramp, ramp, tail,
                      tail]
    # from (C, K) commands: a chunk's close fraction is the share of commands above threshold
    commands = np.where(gf[:, None] * 8 > np.arange(8)[None, :], 1.0, -1.0)
    out = seg(num_chunks=15, chunk_size=8, max_steps=120, gripper=commands)
    assert out.tolist() == seg.labels(gf).tolist()
    # fewer phases: ids clamped
    assert make_segmenter("paper", 3)(num_chunks=15, chunk_size=8, max_steps=120,
                                      gripper=commands).max() == 2
