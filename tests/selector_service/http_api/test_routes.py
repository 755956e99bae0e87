"""HTTP transport over a real server: routes of docs/design.md ("HTTP routes"), errors naming
the field, and bad input never changing the stored state."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from pcm_contract.models import MAX_TRAJECTORIES
from tests.selector_service.conftest import batch, refused_json_select, report

RUN = "http-run"


@pytest.fixture
def run(http: httpx.Client) -> str:
    http.delete(f"/v1/runs/{RUN}")
    r = http.put(f"/v1/runs/{RUN}", json={"feature_dim": 4, "seed": 3})
    assert r.status_code == 200, r.text
    first = http.post(f"/v1/runs/{RUN}/select", json=batch("warm-up"))
    assert first.status_code == 200, first.text
    return RUN


def test_run_lifecycle(http: httpx.Client) -> None:
    r = http.put("/v1/runs/life", json={"phases": 3, "feature_dim": 2})
    assert r.status_code == 200
    info = r.json()
    assert info["config"]["phases"] == 3 and info["config"]["keep_fraction"] == 0.2
    assert info["state_version"] == 0 and info["tasks"] == {}
    r = http.put("/v1/runs/life", json={"keep_fraction": 0.5})  # partial update keeps the rest
    assert r.json()["config"] | {"keep_fraction": 0.2} == info["config"]
    assert http.get("/v1/runs/life").json()["config"]["keep_fraction"] == 0.5
    assert http.put("/v1/runs/life").status_code == 200  # no body: nothing changes
    assert http.delete("/v1/runs/life").json() == {"deleted": True}
    for r in (http.get("/v1/runs/life"), http.delete("/v1/runs/life")):
        assert r.status_code == 404
        assert r.json()["code"] == "NOT_FOUND" and "life" in r.json()["detail"]


def test_select_and_replay(http: httpx.Client, run: str) -> None:
    body = batch("sel-1", n=16, c=8)
    r = http.post(f"/v1/runs/{run}/select", json=body)
    assert r.status_code == 200, r.text
    ans = r.json()
    assert [len(m) for m in ans["masks"]] == [8] * 16
    assert ans["total_chunks"] == 128 and ans["skipped_trajectories"] == 4
    assert ans["kept_chunks"] == sum(map(sum, ans["masks"])) == 12 * 2  # round(0.2 * 8) each
    assert set(ans["keep_probs"]) == {"pick", "place"}
    for mask, weight in zip(ans["masks"], ans["weights"], strict=True):
        assert all((w > 0) == m for m, w in zip(mask, weight, strict=True))
    state = http.get(f"/v1/runs/{run}").json()
    assert state["state_version"] == ans["state_version"] == 2
    # A replay gets the stored answer and changes nothing; another body under the same
    # request_id is a conflict (and changes nothing either).
    again = http.post(f"/v1/runs/{run}/select", json=body)
    assert again.json() == ans
    other = http.post(f"/v1/runs/{run}/select", json=batch("sel-1", seed=5))
    assert other.status_code == 409 and other.json()["field"] == "request_id"
    assert other.json()["code"] == "ALREADY_EXISTS"
    assert http.get(f"/v1/runs/{run}").json() == state


def test_outcomes(http: httpx.Client, run: str) -> None:
    ans = http.post(f"/v1/runs/{run}/select", json=batch("sel-out")).json()
    rep = report(ans["selection_id"], "rep-1")
    r = http.post(f"/v1/runs/{run}/outcomes", json=rep)
    assert r.status_code == 200 and r.json()["accepted"] is True
    assert http.post(f"/v1/runs/{run}/outcomes", json=rep).json()["accepted"] is True
    assert http.get(f"/v1/runs/{run}").json()["outcome_reports"] == 1


def _nan_body() -> bytes:
    body = batch("bad-nan")
    body["trajectories"][2]["action_features"][1][3] = "__NAN__"
    return json.dumps(body).replace('"__NAN__"', "NaN").encode()


def _mutate(path: str, value: Any) -> bytes:
    body = batch("bad")
    *parents, last = path.split(".")
    node: Any = body
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(last) if last.isdigit() else last] = value
    return json.dumps(body).encode()


def _oversized() -> bytes:
    one = batch("x", n=1, c=1)["trajectories"][0]
    return json.dumps({"request_id": "big", "trajectories": [one] * (MAX_TRAJECTORIES + 1)}
                      ).encode()


BAD_SELECTS = {
    "malformed JSON": (b'{"request_id": "x", "trajectories": [', "body"),
    "not an object": (b"[1, 2]", "body"),
    "empty body": (b"", "body"),
    "wrong type success": (_mutate("trajectories.0.success", "maybe"),
                           "trajectories[0].success"),
    "wrong type phase_ids": (_mutate("trajectories.1.phase_ids", "0123"),
                             "trajectories[1].phase_ids"),
    "wrong type step": (_mutate("step", "three"), "step"),
    "float phase ids": (_mutate("trajectories.1.phase_ids", [0.5] * 8),
                        "trajectories[1].phase_ids"),
    "missing request_id": (_mutate("request_id", None), "request_id"),
    "unknown field": (_mutate("extra", 1), "extra"),
    "NaN feature": (_nan_body(), "trajectories[2].action_features"),
    "ragged rows": (_mutate("trajectories.3.action_features", [[1.0] * 4] * 7 + [[1.0] * 3]),
                    "trajectories[3].action_features"),
    "rows vs phase_ids": (_mutate("trajectories.3.action_features", [[1.0] * 4] * 7),
                          "trajectories[3].action_features"),
    "phase out of range": (_mutate("trajectories.4.phase_ids", [0, 1, 2, 3, 4, 0, 0, 0]),
                           "trajectories[4].phase_ids"),
    "negative phase": (_mutate("trajectories.4.phase_ids", [0, -1, 2, 3, 3, 0, 0, 0]),
                       "trajectories[4].phase_ids"),
    "feature_dim mismatch": (_mutate("trajectories.5.action_features", [[1.0] * 5] * 8),
                             "trajectories[5].action_features"),
    "empty batch": (_mutate("trajectories", []), "trajectories"),
    "oversized batch": (_oversized(), "trajectories"),
    "bad keep_fraction": (_mutate("keep_fraction", 1.5), "keep_fraction"),
    "bad request_id": (_mutate("request_id", "has space"), "request_id"),
}


@pytest.mark.parametrize("case", list(BAD_SELECTS))
def test_bad_select_is_422_naming_the_field_and_changes_nothing(
        http: httpx.Client, run: str, case: str) -> None:
    raw, field = BAD_SELECTS[case]
    before = http.get(f"/v1/runs/{run}").json()
    refused_json_select(http, run, raw, field)
    assert http.get(f"/v1/runs/{run}").json() == before


def test_bad_run_id_and_unknown_run(http: httpx.Client) -> None:
    r = http.post("/v1/runs/bad%20id/select", json=batch("x"))
    assert r.status_code == 422 and r.json()["field"] == "run_id"
    r = http.post("/v1/runs/no-such-run/select", json=batch("x"))
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
    assert "no-such-run" in r.json()["detail"]
    r = http.post("/v1/runs/no-such-run/outcomes", json=report("sel-x", "rep-x"))
    assert r.status_code == 404


BAD_RUN_CONFIGS = {
    "keep_fraction": {"keep_fraction": 0},
    "weighting": {"weighting": "sometimes"},
    "phases": {"phases": "four"},
    "eps": {"eps": float("nan")},
}


@pytest.mark.parametrize("field", list(BAD_RUN_CONFIGS))
def test_bad_run_config(http: httpx.Client, run: str, field: str) -> None:
    before = http.get(f"/v1/runs/{run}").json()
    raw = json.dumps(BAD_RUN_CONFIGS[field])  # Python's json writes NaN
    r = http.put(f"/v1/runs/{run}", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and r.json()["code"] == "INVALID_ARGUMENT"
    assert http.get(f"/v1/runs/{run}").json() == before


def test_phases_cannot_change_on_a_run_with_state(http: httpx.Client, run: str) -> None:
    before = http.get(f"/v1/runs/{run}").json()
    r = http.put(f"/v1/runs/{run}", json={"phases": 6})
    assert r.status_code == 422 and r.json()["field"] == "phases"
    assert http.get(f"/v1/runs/{run}").json() == before


@pytest.mark.parametrize(("change", "field"), [
    ({"success_rate": 1.5}, "success_rate"),
    ({"timings": {"rollout_s": -1}}, "timings.rollout_s"),
    ({"request_id": ""}, "request_id"),
    ({"phase_grad_norms": [0.1, "x"]}, "phase_grad_norms[1]"),
])
def test_bad_outcome_report(http: httpx.Client, run: str, change: dict[str, Any],
                            field: str) -> None:
    before = http.get(f"/v1/runs/{run}").json()
    r = http.post(f"/v1/runs/{run}/outcomes", json={**report("sel-1", "rep-bad"), **change})
    assert r.status_code == 422 and r.json()["field"] == field, r.text
    nan = json.dumps(report("sel-1", "rep-nan")).replace("0.5", "NaN")
    r = http.post(f"/v1/runs/{run}/outcomes", content=nan)
    assert r.status_code == 422 and r.json()["field"] == "success_rate", r.text
    assert http.get(f"/v1/runs/{run}").json() == before


def test_health_and_readiness(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    r = http.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready"}
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")


def test_openapi_documents_the_bodies(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    op = spec["paths"]["/v1/runs/{run_id}/select"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/SelectRequest"
    select = schemas["SelectRequest"]
    assert {"request_id", "trainer_id", "step", "keep_fraction", "trajectories"} <= set(
        select["properties"])
    traj = schemas["TrajectoryIn"]["properties"]
    assert traj["action_features"]["type"] == "array"
    out_ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert out_ref.endswith("/SelectResponse")
    outcomes = spec["paths"]["/v1/runs/{run_id}/outcomes"]["post"]
    assert outcomes["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/OutcomeReport")
    assert "StageTimings" in schemas
    assert {"put", "get", "delete"} <= set(spec["paths"]["/v1/runs/{run_id}"])
    for path in ("/healthz", "/readyz", "/metrics"):
        assert path in spec["paths"]
