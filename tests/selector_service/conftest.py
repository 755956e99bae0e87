"""Real selector servers (gRPC + HTTP, in this process: ServerThread of tests/fixtures/servers.py)
on free 127.0.0.1 ports, over the in-memory store (or the store PCM_STORE names), with raw
clients: httpx and the generated gRPC stub."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from pcm_contract.gen.pcm.v1 import selector_pb2 as pb
from pcm_contract.gen.pcm.v1 import selector_pb2_grpc as pb_grpc
from selector_service.settings import Settings
from tests.fixtures.servers import ServerThread

TOKEN = "s3cret-token"
MAX_MESSAGE = 256 * 1024 * 1024
GRPC_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.max_receive_message_length", MAX_MESSAGE)]


def _settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"host": "127.0.0.1", "grpc_port": 0, "http_port": 0,
                            "auth_tokens": "", "grace_period_s": 2.0, "worker_threads": 4}
    return Settings(**{**base, **overrides})


@pytest.fixture(scope="package")
def server() -> Iterator[ServerThread]:
    srv = ServerThread(_settings(max_trainers_per_run=2)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="package")
def auth_server() -> Iterator[ServerThread]:
    srv = ServerThread(_settings(auth_tokens=f"other-token,{TOKEN}")).start()
    yield srv
    srv.stop()


@pytest.fixture
def http(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, timeout=30) as client:
        yield client


@dataclass
class Grpc:
    channel: grpc.Channel
    stub: pb_grpc.ChunkSelectorStub


@pytest.fixture
def grpc_client(server: ServerThread) -> Iterator[Grpc]:
    with grpc.insecure_channel(server.grpc_target, options=GRPC_OPTIONS) as channel:
        yield Grpc(channel, pb_grpc.ChunkSelectorStub(channel))


# ---------------------------------------------------------------------------------------------
# Batches


def batch(request_id: str, *, n: int = 16, c: int = 8, d: int = 4, seed: int = 0,
          tasks: tuple[str, ...] = ("pick", "place"), group_size: int = 4,
          trainer_id: str = "trainer-0") -> dict[str, Any]:
    """A Select body (JSON-ready) whose features are float32 values, so JSON, float32 bytes and
    float64 arrays carry exactly the same numbers. Group g has outcomes mixed except the last
    group, which is all-failure (skipped)."""
    rng = np.random.default_rng(seed)
    groups = max(1, n // group_size)
    trajectories = []
    for i in range(n):
        g = min(i // group_size, groups - 1)
        success = (i % 2 == 0) and g != groups - 1
        x = rng.normal(size=(c, d)).astype(np.float32)
        phases = np.minimum(np.arange(c) * 4 // c, 3)
        x[phases == 2] += 1.0 if success else -1.0
        trajectories.append({
            "task_id": tasks[g % len(tasks)], "group_id": f"g{g}", "success": success,
            "phase_ids": phases.tolist(), "action_features": x.astype(np.float64).tolist()})
    return {"request_id": request_id, "trainer_id": trainer_id, "step": 1,
            "trajectories": trajectories}


def to_proto(run_id: str, body: dict[str, Any], feature_dim: int | None = None
             ) -> pb.SelectChunksRequest:
    """Flatten a Select body by hand (raw stub calls, independent of pcm_contract.codec)."""
    trajs = body["trajectories"]
    feats = np.concatenate([np.asarray(t["action_features"], dtype="<f4") for t in trajs])
    msg = pb.SelectChunksRequest(
        run_id=run_id, request_id=body["request_id"], trainer_id=body.get("trainer_id", ""),
        step=body.get("step", 0),
        task_ids=[t["task_id"] for t in trajs], group_ids=[t["group_id"] for t in trajs],
        success=[t["success"] for t in trajs],
        chunk_counts=[len(t["phase_ids"]) for t in trajs],
        phase_ids=[p for t in trajs for p in t["phase_ids"]],
        action_features=feats.tobytes(),
        feature_dim=feats.shape[1] if feature_dim is None else feature_dim)
    if body.get("keep_fraction") is not None:
        msg.keep_fraction = body["keep_fraction"]
    return msg


def from_proto(resp: pb.SelectChunksResponse) -> tuple[list[np.ndarray], list[np.ndarray]]:
    splits = np.cumsum(list(resp.chunk_counts))[:-1]
    masks = np.frombuffer(resp.masks, dtype=np.uint8).astype(bool)
    weights = np.frombuffer(resp.weights, dtype="<f8")
    return np.split(masks, splits), np.split(weights, splits)


def report(selection_id: str, request_id: str, *, trainer_id: str = "trainer-0",
           **extra: Any) -> dict[str, Any]:
    return {"selection_id": selection_id, "request_id": request_id, "trainer_id": trainer_id,
            "step": 1, "success_rate": 0.5, "loss": 0.25, "kept_chunks": 3,
            "timings": {"rollout_s": 1.5, "select_s": 0.01, "backward_s": 0.75}, **extra}


def big_select(run_id: str, n: int) -> pb.SelectChunksRequest:
    """A batch of n trajectories x 64 chunks that keeps a server (worker) busy for a while
    (about a second on an idle core): what the drain-on-SIGTERM tests send."""
    c, d = 64, 56
    rng = np.random.default_rng(0)
    return pb.SelectChunksRequest(
        run_id=run_id, request_id="drain-1", task_ids=["t"] * n,
        group_ids=[f"g{i // 8}" for i in range(n)], success=[i % 2 == 0 for i in range(n)],
        chunk_counts=[c] * n, phase_ids=np.tile(np.arange(c) // 16, n).tolist(),
        action_features=rng.normal(size=(n * c, d)).astype("<f4").tobytes(), feature_dim=d)


def refused_json_select(http: httpx.Client, run: str, raw: bytes | str, field: str
                        ) -> httpx.Response:
    """POST `raw` as a JSON Select body on `run`: it must be refused with 422
    INVALID_ARGUMENT naming `field` (in `field` and in the detail). The response, for more."""
    r = http.post(f"/v1/runs/{run}/select", content=raw,
                  headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["code"] == "INVALID_ARGUMENT"
    assert err["field"] == field, err
    assert field in err["detail"]
    return r
