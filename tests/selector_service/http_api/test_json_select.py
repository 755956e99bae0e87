"""JSON Select bodies over a real server: read as a stream, their arrays straight into NumPy,
so every limit that bounds memory is checked while the body is read and named in the error;
a client's replay (trained masks and weights) reads the same as its protobuf form."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest

from pcm_contract.models import MAX_TRAJECTORIES
from pcm_contract.run_config import MAX_FEATURE_DIM
from tests.selector_service.conftest import batch, refused_json_select, to_proto

RUN = "json-run"


def _state(http: httpx.Client, run: str) -> dict[str, Any]:
    info = http.get(f"/v1/runs/{run}").json()
    info.pop("store_epoch", None)
    info.pop("run_id", None)
    return dict(info)


@pytest.fixture
def run(http: httpx.Client) -> str:
    http.delete(f"/v1/runs/{RUN}")
    assert http.put(f"/v1/runs/{RUN}", json={"feature_dim": 4, "seed": 3}).status_code == 200
    assert http.post(f"/v1/runs/{RUN}/select", json=batch("warm-up")).status_code == 200
    return RUN


def _with(path: tuple[Any, ...], raw: str) -> bytes:
    """A valid Select body with the JSON text `raw` at `path`."""
    body = batch("bad-json")
    node: Any = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = "__RAW__"
    return json.dumps(body).replace('"__RAW__"', raw).encode()


ROW = "[" + ", ".join(["1.5"] * (MAX_FEATURE_DIM + 1)) + "]"
BAD = {
    "nested too deep": (b'{"request_id": "x", "extra": ' + b"[" * 100 + b"]" * 100 + b"}",
                        "body"),
    "trailing data": (json.dumps(batch("t")).encode() + b" {}", "body"),
    "truncated": (json.dumps(batch("t")).encode()[:-40], "body"),
    "two commas": (_with(("trajectories", 3, "action_features"), "[[1,, 2]]"),
                   "trajectories[3].action_features"),
    "not JSON": (b"\x0a\x03abc", "body"),
    "too many other values": (
        b'{"request_id": "x", "extra": [' + b",".join([b"1"] * 300_000) + b"]}", "body"),
    "row over the width limit": (_with(("trajectories", 1, "action_features"), f"[{ROW}]"),
                                 "trajectories[1].action_features"),
    "booleans as features": (_with(("trajectories", 2, "action_features"), "[[true, false]]"),
                             "trajectories[2].action_features"),
    "strings as features": (_with(("trajectories", 2, "action_features"), '[["1", "2"]]'),
                            "trajectories[2].action_features"),
    "a vector as features": (_with(("trajectories", 2, "action_features"), "[1, 2]"),
                             "trajectories[2].action_features"),
    "Infinity": (_with(("trajectories", 3, "action_features"), "[[1, Infinity]]"),
                 "trajectories[3].action_features"),
    "overflow": (_with(("trajectories", 3, "action_features"), "[[1e999]]"),
                 "trajectories[3].action_features"),
    "phase id too large": (_with(("trajectories", 0, "phase_ids"), "[0, 99999999999]"),
                           "trajectories[0].phase_ids"),
    "nested phase ids": (_with(("trajectories", 0, "phase_ids"), "[[0]]"),
                         "trajectories[0].phase_ids"),
    "masks of numbers": (_with(("trained_masks",), "[[1, 0]]"), "trained_masks"),
    "weights of booleans": (_with(("trained_weights",), "[[true]]"), "trained_weights"),
    "too many trajectories": (
        json.dumps({"request_id": "x", "trajectories": [
            {"task_id": "t", "group_id": "g", "success": True, "phase_ids": [0],
             "action_features": [[0.0]]}] * (MAX_TRAJECTORIES + 1)}).encode(),
        "trajectories"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_json_select_is_422_naming_the_field_and_changes_nothing(
        http: httpx.Client, run: str, case: str) -> None:
    raw, field = BAD[case]
    before = _state(http, run)
    r = refused_json_select(http, run, raw, field)
    assert len(r.text) < 1000
    assert _state(http, run) == before


def test_a_replay_reads_the_same_as_json_and_as_protobuf(http: httpx.Client) -> None:
    """A client's replay of a local selection: trained_masks and trained_weights count the
    batch with the client's masks, whichever form carries them."""
    body = batch("replay-1", n=8, c=6)
    masks = [[(i + k) % 2 == 0 for k in range(6)] for i in range(8)]
    weights = [[2.0 if m else 0.0 for m in row] for row in masks]
    states = []
    for run, form in (("json-replay", "json"), ("proto-replay", "proto")):
        http.delete(f"/v1/runs/{run}")
        assert http.put(f"/v1/runs/{run}", json={"feature_dim": 4}).status_code == 200
        if form == "json":
            r = http.post(f"/v1/runs/{run}/select",
                          json={**body, "trained_masks": masks, "trained_weights": weights})
        else:
            msg = to_proto(run, body)
            msg.trained_masks = np.array(masks, dtype=np.uint8).tobytes()
            msg.trained_weights = np.array(weights, dtype="<f8").tobytes()
            r = http.post(f"/v1/runs/{run}/select", content=msg.SerializeToString(),
                          headers={"content-type": "application/x-protobuf"})
        assert r.status_code == 200, r.text
        assert r.json()["masks"] == masks and r.json()["weights"] == weights
        states.append(_state(http, run))
    assert states[0] == states[1]
    kept = sum(sum(t["chunks_kept"]) for t in states[0]["tasks"].values())
    assert kept == sum(map(sum, masks))
