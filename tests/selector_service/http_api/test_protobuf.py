"""Select and outcome reports over HTTP as protobuf (Content-Type application/x-protobuf, the
gRPC API's messages; the answer in protobuf on Accept), beside JSON, over a real server: the
same answers as JSON, errors naming the field in JSON, and bad bodies changing nothing."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest

from pcm_contract.gen.pcm.v1 import selector_pb2 as pb
from tests.selector_service.conftest import batch, from_proto, report, to_proto

PROTOBUF = "application/x-protobuf"
SEND = {"content-type": PROTOBUF}
BOTH = {"content-type": PROTOBUF, "accept": PROTOBUF}


def _fresh(http: httpx.Client, run: str) -> None:
    http.delete(f"/v1/runs/{run}")
    assert http.put(f"/v1/runs/{run}", json={"feature_dim": 4, "seed": 3}).status_code == 200


def _state(http: httpx.Client, run: str) -> dict[str, Any]:
    info = http.get(f"/v1/runs/{run}").json()
    info.pop("store_epoch", None)
    return dict(info)


def _proto_answer(r: httpx.Response) -> pb.SelectChunksResponse:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == PROTOBUF
    return pb.SelectChunksResponse.FromString(r.content)


def test_select_round_trip_matches_json(http: httpx.Client) -> None:
    for run in ("pb-json", "pb-proto"):
        _fresh(http, run)
    bodies = [batch(f"step-{k}", seed=k) for k in range(3)]
    for body in bodies:
        by_json = http.post("/v1/runs/pb-json/select", json=body)
        assert by_json.status_code == 200, by_json.text
        msg = to_proto("pb-proto", body).SerializeToString()
        answer = _proto_answer(http.post("/v1/runs/pb-proto/select", content=msg,
                                         headers=BOTH))
        masks, weights = from_proto(answer)
        expected = by_json.json()
        assert [m.tolist() for m in masks] == expected["masks"]
        assert [w.tolist() for w in weights] == expected["weights"]
        assert answer.state_version == expected["state_version"]
        assert answer.kept_chunks == expected["kept_chunks"]
        assert {t: list(p.values) for t, p in answer.keep_probs.items()} == \
            expected["keep_probs"]
    # The same state either way.
    json_state, proto_state = _state(http, "pb-json"), _state(http, "pb-proto")
    for info in (json_state, proto_state):
        info.pop("run_id")
    assert json_state == proto_state
    # A replay of the protobuf request gets the stored answer, in the form asked for.
    msg = to_proto("", bodies[-1]).SerializeToString()  # run_id empty: the path's
    replay = http.post("/v1/runs/pb-proto/select", content=msg, headers=SEND)
    assert replay.status_code == 200 and replay.headers["content-type"] == "application/json"
    assert replay.json()["masks"] == [m.tolist() for m in masks]
    assert _state(http, "pb-proto")["state_version"] == 3


def test_json_body_with_a_protobuf_answer_and_reports(http: httpx.Client) -> None:
    _fresh(http, "pb-mixed")
    r = http.post("/v1/runs/pb-mixed/select", json=batch("mixed-1"),
                  headers={"accept": f"application/json;q=0.5, {PROTOBUF}"})
    answer = _proto_answer(r)
    assert answer.selection_id.startswith("sel-") and answer.total_chunks == 16 * 8
    # Accept that prefers JSON, or refuses protobuf: JSON.
    for accept in (f"{PROTOBUF};q=0.5, application/json", f"{PROTOBUF};q=0", "*/*"):
        again = http.post("/v1/runs/pb-mixed/select", json=batch("mixed-1"),
                          headers={"accept": accept})
        assert again.headers["content-type"] == "application/json", accept
        assert again.json()["selection_id"] == answer.selection_id
    # Outcome reports: protobuf in and out; the replay is accepted once.
    rep = report(answer.selection_id, "mixed-rep")
    msg = pb.ReportOutcomesRequest(
        selection_id=rep["selection_id"], request_id=rep["request_id"],
        trainer_id=rep["trainer_id"], step=rep["step"], success_rate=rep["success_rate"],
        loss=rep["loss"], kept_chunks=rep["kept_chunks"],
        timings=pb.StageTimings(**rep["timings"])).SerializeToString()
    for _ in range(2):
        r = http.post("/v1/runs/pb-mixed/outcomes", content=msg, headers=BOTH)
        assert r.status_code == 200 and r.headers["content-type"] == PROTOBUF
        ack = pb.ReportOutcomesResponse.FromString(r.content)
        assert ack.accepted and ack.store_epoch
    # The same report as JSON is the same request (a replay), not a conflict.
    r = http.post("/v1/runs/pb-mixed/outcomes", json=rep)
    assert r.status_code == 200 and r.json()["accepted"] is True
    assert _state(http, "pb-mixed")["outcome_reports"] == 1


MALFORMED = {
    "corrupt": b"\xff\xff\xff\xff",
    "truncated": to_proto("pb-bad", batch("trunc")).SerializeToString()[:-7],
    "bad utf-8": b"\x12\x02\xc3\x28",  # request_id with invalid UTF-8
    "json sent as protobuf": json.dumps(batch("as-json")).encode(),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_protobuf_is_422_on_body_and_changes_nothing(http: httpx.Client,
                                                               case: str) -> None:
    _fresh(http, "pb-bad")
    assert http.post("/v1/runs/pb-bad/select", json=batch("warm")).status_code == 200
    before = _state(http, "pb-bad")
    for path in ("/v1/runs/pb-bad/select", "/v1/runs/pb-bad/outcomes"):
        r = http.post(path, content=MALFORMED[case], headers=BOTH)
        assert r.status_code == 422, (path, r.text)
        assert r.headers["content-type"] == "application/json"  # errors are JSON
        err = r.json()
        assert err["code"] == "INVALID_ARGUMENT" and err["field"] == "body", err
        assert "malformed protobuf message" in err["detail"]
        assert "pcm.v1." in err["detail"]  # names the message expected
    assert _state(http, "pb-bad") == before


def test_wrong_content_type_is_422_on_body(http: httpx.Client) -> None:
    """Protobuf bytes labelled (or not labelled) as JSON are read as JSON: malformed JSON."""
    _fresh(http, "pb-type")
    before = _state(http, "pb-type")
    msg = to_proto("pb-type", batch("typed")).SerializeToString()
    for headers in ({"content-type": "application/json"}, {}, {"content-type": "text/plain"}):
        r = http.post("/v1/runs/pb-type/select", content=msg, headers=headers)
        assert r.status_code == 422, (headers, r.text)
        assert r.json()["field"] == "body" and "malformed JSON" in r.json()["detail"]
    assert _state(http, "pb-type") == before
    # The media type is matched without its parameters and case.
    r = http.post("/v1/runs/pb-type/select", content=msg,
                  headers={"content-type": "Application/X-Protobuf; charset=binary"})
    assert r.status_code == 200, r.text


def _select_error(http: httpx.Client, run: str, msg: pb.SelectChunksRequest) -> dict[str, Any]:
    r = http.post(f"/v1/runs/{run}/select", content=msg.SerializeToString(), headers=BOTH)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/json"
    return dict(r.json())


def test_bad_protobuf_fields_are_named_and_change_nothing(http: httpx.Client) -> None:
    _fresh(http, "pb-fields")
    assert http.post("/v1/runs/pb-fields/select", json=batch("warm")).status_code == 200
    before = _state(http, "pb-fields")
    body = batch("bad-fields")

    def mutated(**changes: Any) -> pb.SelectChunksRequest:
        msg = to_proto("pb-fields", body)
        for name, value in changes.items():
            if isinstance(value, list):
                field = getattr(msg, name)
                del field[:]
                field.extend(value)
            else:
                setattr(msg, name, value)
        return msg

    phases = [p for t in body["trajectories"] for p in t["phase_ids"]]
    cases = {
        "run_id": mutated(run_id="another-run"),
        "phase_ids": mutated(phase_ids=phases[:-1]),
        "group_ids": mutated(group_ids=["g0"]),
        "action_features": mutated(action_features=b"\x00" * 7),
        "request_id": mutated(request_id="has space"),
        "trajectories[0].phase_ids": mutated(phase_ids=[9, *phases[1:]]),
    }
    for field, msg in cases.items():
        err = _select_error(http, "pb-fields", msg)
        assert err["field"] == field and err["code"] == "INVALID_ARGUMENT", (field, err)
        assert field in err["detail"]
    # NaN features: refused naming the trajectory, as over gRPC.
    feats = np.frombuffer(to_proto("x", body).action_features, dtype="<f4").copy()
    feats[40] = np.nan
    err = _select_error(http, "pb-fields", mutated(action_features=feats.tobytes()))
    assert err["field"].startswith("trajectories[") and "action_features" in err["field"]
    assert _state(http, "pb-fields") == before


def test_openapi_documents_both_content_types(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    for path, message, answer in (
            ("/v1/runs/{run_id}/select", "SelectChunksRequest", "SelectChunksResponse"),
            ("/v1/runs/{run_id}/outcomes", "ReportOutcomesRequest", "ReportOutcomesResponse")):
        op = spec["paths"][path]["post"]
        content = op["requestBody"]["content"]
        assert set(content) == {"application/json", PROTOBUF}
        assert content[PROTOBUF]["schema"]["format"] == "binary"
        assert f"pcm.v1.{message}" in content[PROTOBUF]["schema"]["description"]
        answers = op["responses"]["200"]["content"]
        assert set(answers) == {"application/json", PROTOBUF}
        assert f"pcm.v1.{answer}" in answers[PROTOBUF]["schema"]["description"]
