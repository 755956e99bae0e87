"""Parse a Select body's large numeric arrays straight into NumPy, without Python floats.

A Select body is mostly numbers: `trajectories[i].action_features` (rows of floats) and
`trajectories[i].phase_ids` (integers), plus, on a client's replay, `trained_masks` and
`trained_weights`. Parsed as ordinary JSON, every number becomes a Python object (32 bytes or
more for a value that took 2 bytes of text: a 100 MB body of short numbers took 4.3 GB), so
these arrays are cut out of the text and read with `np.fromstring` (4 or 8 bytes a value), and
only the small rest (the "skeleton": ids, booleans, scalars) is parsed as JSON, with each array
replaced by a marker string that `parse_select` swaps for the NumPy array.

Only arrays that hold no strings, no objects and no deeper nesting are cut out; anything else
stays in the skeleton, where the models reject it with their usual messages. An array that is
cut out but does not read as numbers becomes an error naming its field.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from pcm_contract.errors import InvalidArgument
from pcm_contract.models import MAX_CHUNKS_PER_TRAJECTORY, MAX_TOTAL_FLOATS
from pcm_contract.run_config import MAX_FEATURE_DIM

# The arrays cut out: key -> depth (1: a vector, 2: a list of rows).
ARRAY_KEYS = {b"action_features": 2, b"phase_ids": 1, b"trained_masks": 2,
              b"trained_weights": 2}
# The skeleton (everything but the arrays above) of a legitimate body is small: ids, booleans
# and a few scalars per trajectory (4096 trajectories with 128-char ids: ~1.2 MB).
MAX_SKELETON_BYTES = 4 * 1024 * 1024

# Up to this size an array is parsed by orjson (fast; its transient Python objects are bounded by
# the size), above it by np.fromstring, piece by piece (slower; 4 bytes a value are kept).
SMALL_ARRAY_BYTES = 1024 * 1024
PIECE_BYTES = 1024 * 1024

_KEY = re.compile(rb'"(action_features|phase_ids|trained_masks|trained_weights)"\s*:\s*\[')
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]]")
_CLOSE2 = re.compile(rb"\]\s*\]")
_EMPTY = re.compile(rb"\[\s*\]")
_BETWEEN_ROWS = re.compile(rb"\[[^\[\]]*\]")
_UNBRACKET = bytes.maketrans(b"[]", b"  ")
_SPACE = b" \t\r\n,[]"
# The bytes each array may hold (deleted by translate: what is left is an error).
_ALLOWED = {"action_features": _SPACE + b"0123456789.-+eE",
            "trained_weights": _SPACE + b"0123456789.-+eE",
            "phase_ids": _SPACE + b"0123456789-",
            "trained_masks": _SPACE + b"truefals"}
_EXPECTED = {"action_features": "must be a list of equal-length rows of numbers",
             "trained_weights": "must be a list of lists of numbers (one per trajectory)",
             "phase_ids": "must be a flat list of integers",
             "trained_masks": "must be a list of lists of booleans (one per trajectory)"}


@dataclass
class _Cut:
    key: str
    value: Any = None  # np.ndarray (depth 1 or action_features) or list[np.ndarray]
    error: str | None = None


def parse_select(raw: bytes) -> Any:
    """The Select body as Python objects with its big arrays as NumPy arrays (then validated by
    the SelectRequest model). Raises InvalidArgument (field `body` for malformed JSON)."""
    cuts: list[_Cut] = []
    marker = "#pcm-array:" + secrets.token_hex(8) + ":"
    skeleton = _cut_arrays(raw, cuts, marker.encode())
    if len(skeleton) > MAX_SKELETON_BYTES:
        raise InvalidArgument("body", f"{len(skeleton)} bytes outside the feature and phase "
                                      f"arrays, over the limit of {MAX_SKELETON_BYTES}")
    try:
        body = orjson.loads(skeleton)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument("body", f"malformed JSON ({str(exc).split(':')[0]})") from None
    if isinstance(body, dict):
        _restore(body, "", cuts, marker)
        trajectories = body.get("trajectories")
        if isinstance(trajectories, list):
            for i, t in enumerate(trajectories):
                if isinstance(t, dict):
                    _restore(t, f"trajectories[{i}].", cuts, marker)
    return body


def _restore(node: dict[str, Any], path: str, cuts: list[_Cut], marker: str) -> None:
    for key, value in node.items():
        if isinstance(value, str) and value.startswith(marker):
            cut = cuts[int(value[len(marker):])]
            if cut.error is not None:
                raise InvalidArgument(path + key, cut.error)
            node[key] = cut.value


def _cut_arrays(raw: bytes, cuts: list[_Cut], marker: bytes) -> bytes:
    """The body with every cut-out array replaced by `"<marker><index>"`."""
    out: list[bytes] = []
    pos = 0
    strings = _STRING.finditer(raw)
    next_string = next(strings, None)
    for match in _KEY.finditer(raw):
        start = match.start()
        # Skip matches inside a string value (a key match starts at a string's quote).
        while next_string is not None and next_string.end() <= start:
            next_string = next(strings, None)
        if next_string is None or next_string.start() != start or start < pos:
            continue
        open_at = match.end() - 1
        key = match.group(1).decode()
        end = _array_end(raw, open_at, ARRAY_KEYS[key.encode()])
        if end is None:
            continue
        if end < 0:  # never closed: malformed, and nothing after it can be cut out either
            break
        cut = _Cut(key)
        try:
            cut.value = _read(key, raw, open_at, end)
        except ValueError as exc:
            cut.error = str(exc)
        out.append(raw[pos:open_at])
        out.append(b'"' + marker + str(len(cuts)).encode() + b'"')
        cuts.append(cut)
        pos = end
        while next_string is not None and next_string.start() < end:
            next_string = next(strings, None)
    out.append(raw[pos:])
    return b"".join(out)


def _array_end(raw: bytes, open_at: int, depth: int) -> int | None:
    """The end (exclusive) of the array opened at `open_at`, nesting `depth` deep, if it holds
    no string or object; else None (it stays in the skeleton); -1 if it never closes."""
    if depth == 1 or _EMPTY.match(raw, open_at):
        close = raw.find(b"]", open_at)
        end = close + 1
        if close >= 0 and raw.find(b"[", open_at + 1, close) >= 0:
            return None  # nested deeper than a vector: left to the models
    else:
        match = _CLOSE2.search(raw, open_at)
        end = match.end() if match is not None else 0
    if end <= 0:
        return -1
    if raw.find(b'"', open_at, end) >= 0 or raw.find(b"{", open_at, end) >= 0:
        return None
    return end


def _read(key: str, raw: bytes, start: int, end: int) -> Any:
    span = raw[start:end]
    if key == "phase_ids":
        commas = span.count(b",")
        if commas >= MAX_CHUNKS_PER_TRAJECTORY:
            raise ValueError(f"has {commas + 1} chunks, over the limit of "
                             f"{MAX_CHUNKS_PER_TRAJECTORY} per trajectory")
    if key == "action_features" and span.count(b",") >= MAX_TOTAL_FLOATS:
        raise ValueError(f"has over {MAX_TOTAL_FLOATS} values")
    if span.translate(None, _ALLOWED[key]):
        raise ValueError(_EXPECTED[key])
    if len(span) <= SMALL_ARRAY_BYTES or key in ("trained_masks", "phase_ids"):
        # orjson, then NumPy: fast, and the Python objects it makes are bounded by the size
        # (phase_ids by the chunk limit checked above; masks are 1 byte a value in NumPy).
        try:
            value = orjson.loads(span)
        except orjson.JSONDecodeError:
            raise ValueError(_EXPECTED[key]) from None
        return _from_lists(key, value)
    return _from_text(key, raw, start, end)


def _from_lists(key: str, value: list[Any]) -> Any:
    try:
        if key == "phase_ids":
            arr = np.array(value, dtype=np.int64)
            if arr.ndim != 1:
                raise ValueError
            return arr
        if key == "action_features":
            arr = np.array(value, dtype=np.float64)
            if arr.shape == (0,):
                return np.zeros((0, 0), dtype=np.float32)
            if arr.ndim != 2:
                raise ValueError
            with np.errstate(over="ignore"):  # beyond float32: inf, which the core rejects
                return arr.astype(np.float32)
        out = []
        for row in value:
            if not isinstance(row, list):
                raise ValueError
            vec = np.array(row, dtype=bool if key == "trained_masks" else np.float64)
            if vec.ndim != 1:
                raise ValueError
            out.append(vec)
        return out
    except (ValueError, TypeError, OverflowError):
        raise ValueError(_EXPECTED[key]) from None


def _from_text(key: str, raw: bytes, start: int, end: int) -> Any:
    """A large array: read with np.fromstring (4-8 bytes a value, no Python objects)."""
    rows = _rows(raw, start, end)
    if rows is None:
        raise ValueError(_EXPECTED[key])
    if key == "action_features":
        if len(rows) > MAX_CHUNKS_PER_TRAJECTORY:
            raise ValueError(f"has {len(rows)} chunks, over the limit of "
                             f"{MAX_CHUNKS_PER_TRAJECTORY} per trajectory")
        widths = {_width(raw, s, e) for s, e in rows}
        if len(widths) > 1:
            raise ValueError(_EXPECTED[key] + " (ragged rows found)")
        width = widths.pop() if widths else 0
        if width > MAX_FEATURE_DIM:
            raise ValueError(f"rows have {width} values, over the limit of {MAX_FEATURE_DIM}")
        if not rows:
            return np.zeros((0, 0), np.float32)
        flat = _pieces(raw, rows[0][0], rows[-1][1], len(rows) * width, np.float32,
                       _EXPECTED[key])
        return flat.reshape(len(rows), width)
    return [_pieces(raw, s, e, _width(raw, s, e), np.float64, _EXPECTED[key])
            for s, e in rows]


def _pieces(raw: bytes, start: int, end: int, count: int, dtype: Any,
            expected: str) -> np.ndarray:
    """The `count` comma-separated numbers of raw[start:end] (row brackets read as blanks),
    parsed a piece of about PIECE_BYTES at a time into one array of `dtype`."""
    out = np.empty(count, dtype=dtype)
    filled = 0
    pos = start
    while pos < end:
        stop = min(end, pos + PIECE_BYTES)
        if stop < end:  # cut at a comma, so no number is split
            comma = raw.rfind(b",", pos, stop)
            stop = comma if comma > pos else raw.find(b",", stop, end)
            if stop < 0:
                stop = end
        values = _numbers(raw[pos:stop].translate(_UNBRACKET), np.float64, expected)
        if filled + values.shape[0] > count:
            raise ValueError(expected)
        with np.errstate(over="ignore"):  # beyond float32: inf, which the core rejects
            out[filled:filled + values.shape[0]] = values
        filled += values.shape[0]
        pos = stop + 1
    if filled != count:
        raise ValueError(expected)
    return out


def _rows(raw: bytes, start: int, end: int) -> list[tuple[int, int]] | None:
    """(start, end) of each row's inside of a two-deep array, or None if it is not one."""
    rows = []
    row_start = -1
    for bracket in _BRACKET.finditer(raw, start + 1, end - 1):
        if bracket.group() == b"[":
            if row_start >= 0:
                return None
            row_start = bracket.end()
        else:
            if row_start < 0:
                return None
            rows.append((row_start, bracket.start()))
            row_start = -1
    outside = _BETWEEN_ROWS.sub(b"", raw[start + 1:end - 1]) if rows else raw[start + 1:end - 1]
    if outside.strip(b" \t\r\n,") or row_start >= 0:
        return None
    return rows


def _numbers(text: bytes, dtype: Any, expected: str) -> np.ndarray:
    """Comma-separated numbers as a 1-D array; ValueError if `text` is anything else."""
    if not text.strip():
        return np.zeros(0, dtype=dtype)
    try:
        values = np.fromstring(text, dtype=dtype, sep=",")
    except (ValueError, DeprecationWarning):
        raise ValueError(expected) from None
    if values.shape[0] != text.count(b",") + 1:
        raise ValueError(expected)
    return values


def _width(raw: bytes, start: int, end: int) -> int:
    if not raw[start:end].strip():
        return 0
    return raw.count(b",", start, end) + 1
