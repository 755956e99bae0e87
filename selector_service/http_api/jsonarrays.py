"""Parse a JSON Select body with its large numeric arrays read straight into NumPy.

A Select body is mostly numbers: `trajectories[i].action_features` (rows of floats) and
`trajectories[i].phase_ids` (integers), plus, on a client's replay, `trained_masks` and
`trained_weights`. Parsed into Python objects (json, orjson or pydantic alike), every number
becomes an object of 8 to 32 bytes for what took 2 bytes of text (a 100 MB body of short numbers
took 4.3 GB). So the body is read as a stream of parse events (ijson over the yajl C parser):
the values of those arrays go into typed buffers as they are read (4 bytes a feature), and only
the small rest (ids, booleans, scalars) becomes Python objects, validated by the SelectRequest
model. Every limit that bounds memory (row width, rows, trajectories, values in all, values
outside the arrays, nesting) is checked while the body is read, naming the field.

Clients with large batches send the protobuf message instead (`body.py`); this path keeps plain
JSON cheap enough that no JSON body can exhaust the server.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import Any

import ijson
import numpy as np

from pcm_contract.errors import InvalidArgument
from pcm_contract.models import MAX_CHUNKS_PER_TRAJECTORY, MAX_TOTAL_FLOATS, MAX_TRAJECTORIES
from pcm_contract.run_config import MAX_FEATURE_DIM

# Values outside those four arrays (ids, booleans, scalars, containers): a legitimate body has
# about ten per trajectory.
MAX_OTHER_VALUES = 256 * 1024
MAX_DEPTH = 32  # a Select body nests 5 deep

_EXPECTED = {"action_features": "must be a list of equal-length rows of numbers",
             "phase_ids": "must be a flat list of integers",
             "trained_masks": "must be a list of lists of booleans (one per trajectory)",
             "trained_weights": "must be a list of lists of numbers (one per trajectory)"}

Events = Iterator[tuple[str, Any]]


def parse_select(raw: bytes) -> Any:
    """The Select body as Python objects with its big arrays as NumPy arrays (then validated by
    the SelectRequest model). Raises InvalidArgument: field `body` for malformed JSON, or the
    array's field for an array that is not what it should be."""
    reader = _Reader(ijson.basic_parse(raw, use_float=True))
    try:
        body = reader.document()
    except ijson.JSONError as exc:
        reason = _reason(exc)
        # A bad value inside an array names the array; a body cut short is the body's fault.
        if reader.array is not None and "premature EOF" not in reason:
            hint = "; NaN and Infinity are not JSON" if reason.startswith("lexical") else ""
            raise InvalidArgument(reader.array, f"malformed JSON ({reason}{hint})") from None
        raise InvalidArgument("body", f"malformed JSON ({reason})") from None
    return body


def _reason(exc: Exception) -> str:
    """yajl's message without the quoted input that follows it."""
    text = exc.args[0] if exc.args else ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    first = str(text).strip().splitlines()
    return first[0].strip().rstrip(".") if first else "unreadable"


class _Reader:
    def __init__(self, events: Events) -> None:
        self.events = events
        self.array: str | None = None  # the field of the array being read
        self.other = 0  # values read outside the arrays
        self.floats = 0  # feature values read

    def document(self) -> Any:
        event, value = next(self.events, ("end", None))
        if event == "end":
            raise InvalidArgument("body", "a JSON object is required")
        body = self.select() if event == "start_map" else self.value(event, value, 0)
        for _ in self.events:  # nothing may follow (yajl raises on trailing garbage)
            raise InvalidArgument("body", "malformed JSON (trailing data)")
        return body

    def select(self) -> dict[str, Any]:
        """The top-level object: its arrays read by the methods below, the rest by `value`."""
        body: dict[str, Any] = {}
        for event, key in self.events:
            if event == "end_map":
                break
            event, value = next(self.events)
            if key == "trajectories" and event == "start_array":
                body[key] = self.trajectories()
            elif key in ("trained_masks", "trained_weights") and event == "start_array":
                body[key] = self.vectors(key)
            else:
                body[key] = self.value(event, value, 1)
        return body

    def count(self, depth: int) -> None:
        self.other += 1
        if self.other > MAX_OTHER_VALUES:
            raise InvalidArgument("body", f"over {MAX_OTHER_VALUES} values outside the "
                                          "feature, phase and trained arrays")
        if depth > MAX_DEPTH:
            raise InvalidArgument("body", f"nested deeper than {MAX_DEPTH} levels")

    def value(self, event: str, value: Any, depth: int) -> Any:
        """Any JSON value as Python objects (left to the models to accept or refuse)."""
        self.count(depth)
        if event == "start_map":
            out: dict[str, Any] = {}
            for event, key in self.events:
                if event == "end_map":
                    return out
                out[key] = self.value(*next(self.events), depth + 1)
        if event == "start_array":
            items: list[Any] = []
            for event, item in self.events:
                if event == "end_array":
                    return items
                items.append(self.value(event, item, depth + 1))
        return value

    def trajectories(self) -> list[Any]:
        out: list[Any] = []
        for event, value in self.events:
            if event == "end_array":
                break
            if len(out) == MAX_TRAJECTORIES:
                raise InvalidArgument("trajectories", f"over {MAX_TRAJECTORIES} trajectories, "
                                                      "the limit per request; split the batch")
            if event != "start_map":
                out.append(self.value(event, value, 2))
                continue
            self.count(2)
            trajectory: dict[str, Any] = {}
            for event, key in self.events:
                if event == "end_map":
                    break
                event, value = next(self.events)
                field = f"trajectories[{len(out)}].{key}"
                if key == "action_features" and event == "start_array":
                    trajectory[key] = self.matrix(field)
                elif key == "phase_ids" and event == "start_array":
                    trajectory[key] = self.phases(field)
                else:
                    trajectory[key] = self.value(event, value, 3)
            out.append(trajectory)
        return out

    def matrix(self, field: str) -> np.ndarray:
        """Equal-length rows of numbers, as float32 (rows, width)."""
        self.array = field
        values = array("f")
        rows, width = 0, -1
        for event, _ in self.events:
            if event == "end_array":
                break
            if event != "start_array":
                raise InvalidArgument(field, _EXPECTED["action_features"])
            n = 0
            for event, value in self.events:
                if event == "number":
                    values.append(value)  # beyond float32: inf, which the core rejects
                    n += 1
                    if n > MAX_FEATURE_DIM:
                        raise InvalidArgument(field, f"rows have over {MAX_FEATURE_DIM} "
                                                     "values, the limit")
                elif event == "end_array":
                    break
                else:
                    raise InvalidArgument(field, _EXPECTED["action_features"])
            if width >= 0 and n != width:
                raise InvalidArgument(field, _EXPECTED["action_features"] +
                                      f" (rows of {width} and {n} values found)")
            width = n
            rows += 1
            if rows > MAX_CHUNKS_PER_TRAJECTORY:
                raise InvalidArgument(field, f"has over {MAX_CHUNKS_PER_TRAJECTORY} chunks, "
                                             "the limit per trajectory")
            self.floats += n
            if self.floats > MAX_TOTAL_FLOATS:
                raise InvalidArgument("trajectories", f"over {MAX_TOTAL_FLOATS} feature values "
                                                      "in all, the limit; split the batch")
        self.array = None
        return np.frombuffer(values, dtype=np.float32).reshape(rows, max(width, 0))

    def phases(self, field: str) -> np.ndarray:
        """A flat list of integers, as int64."""
        self.array = field
        values = array("i")
        for event, value in self.events:
            if event == "end_array":
                break
            if event != "number" or type(value) is not int:
                raise InvalidArgument(field, _EXPECTED["phase_ids"])
            try:
                values.append(value)
            except OverflowError:
                raise InvalidArgument(field, f"phase id {value} is out of range") from None
            if len(values) > MAX_CHUNKS_PER_TRAJECTORY:
                raise InvalidArgument(field, f"has over {MAX_CHUNKS_PER_TRAJECTORY} chunks, "
                                             "the limit per trajectory")
        self.array = None
        return np.frombuffer(values, dtype=np.int32).astype(np.int64)

    def vectors(self, key: str) -> list[Any]:
        """trained_masks (booleans) or trained_weights (numbers): one list per trajectory."""
        self.array = key
        masks = key == "trained_masks"
        want = "boolean" if masks else "number"
        out: list[Any] = []
        for event, _ in self.events:
            if event == "end_array":
                break
            if event != "start_array" or len(out) == MAX_TRAJECTORIES:
                raise InvalidArgument(key, _EXPECTED[key])
            values = array("b" if masks else "d")
            for event, value in self.events:
                if event == want:
                    values.append(value)
                    if len(values) > MAX_CHUNKS_PER_TRAJECTORY:
                        raise InvalidArgument(f"{key}[{len(out)}]", "has over "
                                              f"{MAX_CHUNKS_PER_TRAJECTORY} entries, the limit "
                                              "per trajectory")
                elif event == "end_array":
                    break
                else:
                    raise InvalidArgument(key, _EXPECTED[key])
            out.append(np.frombuffer(values, dtype=np.int8).astype(bool) if masks
                       else np.frombuffer(values, dtype=np.float64))
        self.array = None
        return out
