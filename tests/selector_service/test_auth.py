"""Bearer-token auth (PCM_AUTH_TOKENS) over both transports: every call but health, readiness,
metrics and reflection needs a configured token; a rejected call changes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pcm_contract.errors import Unauthenticated
from pcm_contract.gen.pcm.v1 import selector_pb2 as pb
from pcm_contract.gen.pcm.v1 import selector_pb2_grpc as pb_grpc
from selector_service.auth import TokenAuth
from tests.fixtures.servers import ServerThread
from tests.selector_service.conftest import (
    GRPC_OPTIONS,
    TOKEN,
    batch,
    to_proto,
)

GOOD = {"authorization": f"Bearer {TOKEN}"}
BAD_HEADERS = {
    "missing": {},
    "wrong token": {"authorization": "Bearer nope"},
    "token prefix": {"authorization": f"Bearer {TOKEN[:-1]}"},
    "wrong scheme": {"authorization": f"Basic {TOKEN}"},
    "no token": {"authorization": "Bearer"},
}


@pytest.fixture
def http(auth_server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=auth_server.http_url, timeout=30) as client:
        yield client


@pytest.fixture
def channel(auth_server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(auth_server.grpc_target, options=GRPC_OPTIONS) as ch:
        yield ch


def test_token_auth_unit() -> None:
    auth = TokenAuth(["a", "b"])
    auth.check("Bearer a")
    auth.check("bearer  b ")
    for value in (None, "", "a", "Bearer", "Bearer c", "Token a", "Bearer ab"):
        with pytest.raises(Unauthenticated):
            auth.check(value)
    TokenAuth([]).check(None)  # auth off
    assert not TokenAuth(["", ""]).enabled


@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_http_rejects_bad_credentials_and_changes_nothing(http: httpx.Client, case: str) -> None:
    assert http.put("/v1/runs/auth-h", json={"feature_dim": 4}, headers=GOOD).status_code == 200
    before = http.get("/v1/runs/auth-h", headers=GOOD).json()
    headers = BAD_HEADERS[case]
    calls = [
        http.put("/v1/runs/auth-h", json={"keep_fraction": 0.9}, headers=headers),
        http.get("/v1/runs/auth-h", headers=headers),
        http.post("/v1/runs/auth-h/select", json=batch("a-1"), headers=headers),
        http.post("/v1/runs/auth-h/outcomes", json={}, headers=headers),
        http.delete("/v1/runs/auth-h", headers=headers),
    ]
    for r in calls:
        assert r.status_code == 401, r.text
        assert r.json()["code"] == "UNAUTHENTICATED"
        assert r.headers["www-authenticate"] == "Bearer"
    assert http.get("/v1/runs/auth-h", headers=GOOD).json() == before


def test_http_open_endpoints_and_good_token(http: httpx.Client) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert http.get(path).status_code == 200
    assert http.put("/v1/runs/auth-ok", json={"feature_dim": 4}, headers=GOOD).status_code == 200
    r = http.post("/v1/runs/auth-ok/select", json=batch("a-2"),
                  headers={"authorization": "Bearer other-token"})  # any configured token
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_grpc_rejects_bad_credentials_and_changes_nothing(channel: grpc.Channel,
                                                          case: str) -> None:
    stub = pb_grpc.ChunkSelectorStub(channel)
    good = tuple(GOOD.items())
    stub.PutRun(pb.PutRunRequest(run_id="auth-g", config=pb.RunConfig(feature_dim=4)),
                metadata=good)
    before = stub.GetRun(pb.GetRunRequest(run_id="auth-g"), metadata=good)
    metadata = tuple(BAD_HEADERS[case].items())
    calls = [
        lambda: stub.PutRun(pb.PutRunRequest(run_id="auth-g",
                                             config=pb.RunConfig(keep_fraction=0.9)),
                            metadata=metadata),
        lambda: stub.GetRun(pb.GetRunRequest(run_id="auth-g"), metadata=metadata),
        lambda: stub.SelectChunks(to_proto("auth-g", batch("a-3")), metadata=metadata),
        lambda: stub.ReportOutcomes(pb.ReportOutcomesRequest(run_id="auth-g"),
                                    metadata=metadata),
        lambda: stub.DeleteRun(pb.DeleteRunRequest(run_id="auth-g"), metadata=metadata),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "Bearer" in err.value.details() or "token" in err.value.details()
    assert stub.GetRun(pb.GetRunRequest(run_id="auth-g"), metadata=good) == before


def test_grpc_health_and_reflection_stay_open(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == (
        health_pb2.HealthCheckResponse.SERVING)
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(iter(reflect.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]))))
    assert "pcm.v1.ChunkSelector" in {s.name for s in answer.list_services_response.service}
    stub = pb_grpc.ChunkSelectorStub(channel)
    stub.PutRun(pb.PutRunRequest(run_id="auth-g2", config=pb.RunConfig(feature_dim=4)),
                metadata=(("authorization", f"Bearer {TOKEN}"),))
    resp = stub.SelectChunks(to_proto("auth-g2", batch("a-4")),
                             metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert resp.total_chunks == 128


def test_rejected_selects_are_counted_unauthenticated(auth_server: ServerThread,
                                                      http: httpx.Client,
                                                      channel: grpc.Channel) -> None:
    http.post("/v1/runs/auth-m/select", json=batch("m"))
    with pytest.raises(grpc.RpcError):
        pb_grpc.ChunkSelectorStub(channel).SelectChunks(to_proto("auth-m", batch("m")))
    text = http.get("/metrics").text
    for transport in ("http", "grpc"):
        assert (f'pcm_select_requests_total{{status="UNAUTHENTICATED",transport="{transport}"}}'
                in text)
