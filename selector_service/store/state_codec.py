"""Binary forms of a task's state and of a batch's update, as the Redis store keeps and sends
them: the Lua fold (store/lua.py) reads and writes them with Redis' `struct` library, so every
float travels as its float64 bits (JSON through Lua's cjson would round them to 14 digits).

Task state (``pcm:{RUN}:state:TASK``), little-endian:

    0   b"T", u8 format version (1 or 2), u16 P, u32 D (signal_ref's width; 0: none)
    8   f64 trajectories, f64 skipped_trajectories, f64 version
        version 2 only: f64 window_batches
    ..  f64[P] scores (NaN: never observed), f64[P] observations, f64[P] chunks_total,
        f64[P] chunks_kept
        version 2 only: f64[P] window_sum, f64[P] window_count
        f64[P * D] signal_ref, row-major (NaN rows: no reference for the phase)

Version 2 is written only while a score window (`score_window`) holds evidence; a state
with an empty window is written as version 1, so runs without a window store what earlier
versions stored.

Counters are float64 (Lua's numbers): exact up to 2^53. States that earlier versions stored as
JSON (``TaskState.to_dict``) still decode, here and in Lua, and are rewritten in this form by
the next fold.

A task's update (one batch; `core/fold.py`'s TaskUpdate):

    0   b"U", u8 format version (1), u16 P, u32 D (the reference input's width; 0: none)
    8   f64 trajectories, f64 skipped_trajectories
    24  f64[P] evidence v, f64[P] observed (0 or 1), f64[P] chunks_total, f64[P] chunks_kept
        D > 0: f64[P] present (0 or 1), f64[P * D] mean group phase sums

The fold's parameters: f64 eta, u8 bias-corrected (1 for score `signal`), u16 score window
(0: EMA).
"""

from __future__ import annotations

import json
import struct

import numpy as np

from selector_service.core import TaskState
from selector_service.core.fold import TaskUpdate

STATE_KIND = b"T"
UPDATE_KIND = b"U"
FORMAT_VERSION = 1  # of updates, and of states without a score window
WINDOW_FORMAT_VERSION = 2  # of states whose score window holds evidence
HEADER = struct.Struct("<cBHI")
FOLD_PARAMS = struct.Struct("<dBH")


def encode_state(state: TaskState) -> bytes:
    p = state.num_phases
    ref = state.signal_ref
    d = 0 if ref is None else int(ref.shape[1])
    wsum, wcount = state.window()
    windowed = state.window_batches > 0 or bool(wsum.any()) or bool(wcount.any())
    head = [state.trajectories, state.skipped_trajectories, state.version]
    arrays = [state.scores, state.observations, state.chunks_total, state.chunks_kept]
    if windowed:
        head.append(state.window_batches)
        arrays += [wsum, wcount]
    body = np.concatenate([np.array(head, np.float64), *arrays,
                           np.zeros(0) if ref is None else ref.reshape(-1)])
    version = WINDOW_FORMAT_VERSION if windowed else FORMAT_VERSION
    return HEADER.pack(STATE_KIND, version, p, d) + body.astype("<f8", copy=False).tobytes()


def decode_state(raw: bytes) -> TaskState:
    """A stored task state, binary or (as earlier versions stored it) JSON."""
    if raw[:1] != STATE_KIND:
        return TaskState.from_dict(json.loads(raw))
    _, version, p, d = HEADER.unpack_from(raw)
    if version not in (FORMAT_VERSION, WINDOW_FORMAT_VERSION):
        raise ValueError(f"task state format {version} is not {FORMAT_VERSION} or "
                         f"{WINDOW_FORMAT_VERSION}")
    windowed = version == WINDOW_FORMAT_VERSION
    n_head, n_arrays = (4, 6) if windowed else (3, 4)
    values = np.frombuffer(raw, dtype="<f8", offset=HEADER.size)
    if values.shape[0] != n_head + n_arrays * p + p * d:
        raise ValueError(f"corrupt task state: {values.shape[0]} values for P {p}, D {d}")
    head = values[:n_head]
    arrays = values[n_head:n_head + n_arrays * p].reshape(n_arrays, p)
    ref_at = n_head + n_arrays * p
    return TaskState(
        scores=arrays[0].astype(np.float64),  # copies: the caller may change them
        observations=arrays[1].astype(np.int64),
        chunks_total=arrays[2].astype(np.int64),
        chunks_kept=arrays[3].astype(np.int64),
        trajectories=int(head[0]),
        skipped_trajectories=int(head[1]),
        version=int(head[2]),
        signal_ref=None if d == 0 else values[ref_at:].reshape(p, d).astype(np.float64),
        window_sum=arrays[4].astype(np.float64) if windowed else None,
        window_count=arrays[5].astype(np.int64) if windowed else None,
        window_batches=int(head[3]) if windowed else 0,
    )


def encode_update(update: TaskUpdate) -> bytes:
    p = int(update.evidence.shape[0])
    parts = [np.array([update.trajectories, update.skipped_trajectories], np.float64),
             update.evidence, update.observed, update.chunks_total, update.chunks_kept]
    d = 0
    if update.group_mean is not None and update.present is not None:
        d = int(update.group_mean.shape[1])
        parts += [update.present, update.group_mean.reshape(-1)]
    body = np.concatenate([np.asarray(x, dtype=np.float64) for x in parts]).astype("<f8")
    return HEADER.pack(UPDATE_KIND, FORMAT_VERSION, p, d) + body.tobytes()


def encode_fold_params(eta: float, bias_corrected: bool, window: int = 0) -> bytes:
    return FOLD_PARAMS.pack(float(eta), 1 if bias_corrected else 0, int(window))


def encode_counts(values: np.ndarray) -> bytes:
    """(P,) integers as float64: a kept-chunk correction of a reconcile."""
    return np.asarray(values, dtype="<f8").tobytes()
