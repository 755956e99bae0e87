"""gRPC transport over a real server, with raw stub calls: runs, select, outcomes, the error
codes naming the field, health and reflection, the LIBERO-size batch, and the same answers as
HTTP and the embedded selector."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pcm_contract import codec
from pcm_contract.gen.pcm.v1 import selector_pb2 as pb
from pcm_contract.gen.pcm.v1 import selector_pb2_grpc as pb_grpc
from pcm_contract.models import MAX_TRAJECTORIES, OutcomeReport, SelectRequest, SelectResponse
from tests.fixtures.servers import ServerThread
from tests.selector_service.conftest import (
    Grpc,
    batch,
    from_proto,
    report,
    to_proto,
)
from trainer_client.clients import EmbeddedClient

RUN = "grpc-run"


@pytest.fixture
def run(grpc_client: Grpc) -> str:
    stub = grpc_client.stub
    try:
        stub.DeleteRun(pb.DeleteRunRequest(run_id=RUN))
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
    stub.PutRun(pb.PutRunRequest(run_id=RUN, config=pb.RunConfig(feature_dim=4, seed=3)))
    stub.SelectChunks(to_proto(RUN, batch("warm-up")))
    return RUN


def test_run_lifecycle(grpc_client: Grpc) -> None:
    stub = grpc_client.stub
    info = stub.PutRun(pb.PutRunRequest(run_id="g-life",
                                        config=pb.RunConfig(phases=3, feature_dim=2)))
    assert info.config.phases == 3 and info.config.keep_fraction == pytest.approx(0.2)
    assert info.config.HasField("mode") and info.config.mode == "pcm"
    info = stub.PutRun(pb.PutRunRequest(run_id="g-life", config=pb.RunConfig(eps=0.0)))
    assert info.config.eps == 0.0 and info.config.phases == 3  # unset fields kept
    assert stub.GetRun(pb.GetRunRequest(run_id="g-life")).config.eps == 0.0
    assert stub.DeleteRun(pb.DeleteRunRequest(run_id="g-life")).deleted
    for call in (lambda: stub.GetRun(pb.GetRunRequest(run_id="g-life")),
                 lambda: stub.DeleteRun(pb.DeleteRunRequest(run_id="g-life"))):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "g-life" in err.value.details()


def test_select_get_run_and_outcomes(grpc_client: Grpc, run: str) -> None:
    stub = grpc_client.stub
    resp = stub.SelectChunks(to_proto(run, batch("g-sel", n=16, c=8)))
    masks, weights = from_proto(resp)
    assert [m.shape[0] for m in masks] == [8] * 16 and resp.total_chunks == 128
    assert resp.kept_chunks == sum(int(m.sum()) for m in masks) == 24
    assert all(np.array_equal(w > 0, m) for m, w in zip(masks, weights, strict=True))
    assert set(resp.keep_probs) == {"pick", "place"}
    assert sum(resp.keep_probs["pick"].values) == pytest.approx(1.0)
    info = stub.GetRun(pb.GetRunRequest(run_id=run))
    assert info.state_version == resp.state_version == 2
    assert set(info.tasks) == {"pick", "place"}
    pick = info.tasks["pick"]
    assert len(pick.scores) == 4 and len(pick.keep_probs) == 4 and pick.state_version == 2
    # replay: stored answer, no state change; another body under the same id: ALREADY_EXISTS
    again = stub.SelectChunks(to_proto(run, batch("g-sel", n=16, c=8)))
    assert again == resp
    with pytest.raises(grpc.RpcError) as err:
        stub.SelectChunks(to_proto(run, batch("g-sel", seed=9)))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert stub.GetRun(pb.GetRunRequest(run_id=run)) == info
    rep = report(resp.selection_id, "g-rep")
    msg = pb.ReportOutcomesRequest(
        run_id=run, selection_id=rep["selection_id"], request_id=rep["request_id"],
        trainer_id=rep["trainer_id"], success_rate=0.5, loss=0.1, kept_chunks=24,
        timings=pb.StageTimings(rollout_s=1.0, select_s=0.01, backward_s=0.5),
        phase_grad_norms=[0.1, 0.2, 0.3, 0.4])
    assert stub.ReportOutcomes(msg).accepted
    assert stub.ReportOutcomes(msg).accepted  # idempotent
    assert stub.GetRun(pb.GetRunRequest(run_id=run)).outcome_reports == 1


def test_libero_step_fits_in_one_message(grpc_client: Grpc) -> None:
    """512 trajectories x 64 chunks x D 56: ~7.3 MB of float32, over gRPC's default 4 MB."""
    stub = grpc_client.stub
    stub.PutRun(pb.PutRunRequest(run_id="libero", config=pb.RunConfig(feature_dim=56)))
    n, c, d = 512, 64, 56
    rng = np.random.default_rng(0)
    features = rng.normal(size=(n * c, d)).astype("<f4")
    msg = pb.SelectChunksRequest(
        run_id="libero", request_id="step-0", task_ids=["t"] * n,
        group_ids=[f"g{i // 8}" for i in range(n)], success=[i % 2 == 0 for i in range(n)],
        chunk_counts=[c] * n, phase_ids=np.tile(np.arange(c) // 16, n).tolist(),
        action_features=features.tobytes(), feature_dim=d)
    assert msg.ByteSize() > 7_000_000
    resp = stub.SelectChunks(msg, timeout=60)
    assert resp.total_chunks == n * c and len(resp.masks) == n * c
    assert resp.kept_chunks == n * round(0.2 * c)
    stub.DeleteRun(pb.DeleteRunRequest(run_id="libero"))


def _with(**changes: Any) -> Callable[[pb.SelectChunksRequest], None]:
    def apply(msg: pb.SelectChunksRequest) -> None:
        for name, value in changes.items():
            if isinstance(value, list):
                del getattr(msg, name)[:]
                getattr(msg, name).extend(value)
            else:
                setattr(msg, name, value)
    return apply


def _nan(msg: pb.SelectChunksRequest) -> None:
    feats = np.frombuffer(msg.action_features, dtype="<f4").copy()
    feats[8 * 4 * 2 + 5] = np.nan  # trajectory 2 (8 chunks x D 4 each), chunk 1
    msg.action_features = feats.tobytes()


def _phase(value: int) -> Callable[[pb.SelectChunksRequest], None]:
    def apply(msg: pb.SelectChunksRequest) -> None:
        msg.phase_ids[8 * 4 + 1] = value  # trajectory 4, chunk 1
    return apply


def _oversized(msg: pb.SelectChunksRequest) -> None:
    n = MAX_TRAJECTORIES + 1
    msg.CopyFrom(pb.SelectChunksRequest(
        run_id=msg.run_id, request_id="big", task_ids=["t"] * n, group_ids=["g"] * n,
        success=[True] * n, chunk_counts=[1] * n, phase_ids=[0] * n,
        action_features=np.zeros((n, 4), dtype="<f4").tobytes(), feature_dim=4))


BAD_SELECTS: dict[str, tuple[Callable[[pb.SelectChunksRequest], None], str]] = {
    "bytes not a multiple of 4": (
        lambda m: setattr(m, "action_features", m.action_features[:-1]), "action_features"),
    "features short of M x D": (
        lambda m: setattr(m, "action_features", m.action_features[:-16]), "action_features"),
    "lengths not summing to the data": (_with(chunk_counts=[8] * 15 + [7]), "phase_ids"),
    "negative length": (_with(chunk_counts=[-8, 16] + [8] * 14), "chunk_counts"),
    "per-trajectory lists differ": (_with(group_ids=["g0"] * 15), "group_ids"),
    "NaN feature": (_nan, "trajectories[2].action_features"),
    "phase out of range": (_phase(7), "trajectories[4].phase_ids"),
    "negative phase": (_phase(-1), "trajectories[4].phase_ids"),
    "declared feature_dim vs bytes": (_with(feature_dim=8), "action_features"),
    "feature_dim mismatch": (_with(feature_dim=8, action_features=b"\0" * 4 * 128 * 8),
                             "trajectories[0].action_features"),
    "inferred feature_dim mismatch": (_with(feature_dim=0, action_features=b"\0" * 4 * 128 * 2),
                                      "trajectories[0].action_features"),
    "empty trajectory": (_with(chunk_counts=[0, 16] + [8] * 14), "trajectories[0].phase_ids"),
    "empty batch": (_with(task_ids=[], group_ids=[], success=[], chunk_counts=[],
                          phase_ids=[], action_features=b""), "trajectories"),
    "oversized batch": (_oversized, "task_ids"),
    "missing request_id": (_with(request_id=""), "request_id"),
    "bad keep_fraction": (_with(keep_fraction=0.0), "keep_fraction"),
    "bad task id": (_with(task_ids=["a b"] + ["pick"] * 15), "trajectories[0].task_id"),
    "bad run id": (_with(run_id="no/slash"), "run_id"),
    # checked on the flat batch (no request model on the gRPC path), naming the same fields
    "bad trainer id": (_with(trainer_id="a b"), "trainer_id"),
    "negative step": (_with(step=-1), "step"),
    "NaN keep_fraction": (_with(keep_fraction=float("nan")), "keep_fraction"),
    "bad group id": (_with(group_ids=["g0"] * 5 + ["g 5"] + ["g1"] * 10),
                     "trajectories[5].group_id"),
    "trained weight off the mask": (_with(trained_masks=b"\0" * 128, trained_weights=(
        np.eye(1, 128, 8 * 3 + 2).ravel().astype("<f8").tobytes())), "trained_weights[3]"),
    "trained masks without weights": (_with(trained_masks=b"\1" * 128), "trained_weights"),
}


@pytest.mark.parametrize("case", list(BAD_SELECTS))
def test_bad_select_is_invalid_argument_naming_the_field_and_changes_nothing(
        grpc_client: Grpc, run: str, case: str) -> None:
    mutate, field = BAD_SELECTS[case]
    stub = grpc_client.stub
    before = stub.GetRun(pb.GetRunRequest(run_id=run))
    msg = to_proto(run, batch("bad"))
    mutate(msg)
    with pytest.raises(grpc.RpcError) as err:
        stub.SelectChunks(msg)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert err.value.details().startswith(f"{field}:"), err.value.details()
    assert ("pcm-error-field", field) in tuple(err.value.trailing_metadata())
    assert stub.GetRun(pb.GetRunRequest(run_id=run)) == before


def test_unknown_run_and_bad_report(grpc_client: Grpc, run: str) -> None:
    stub = grpc_client.stub
    with pytest.raises(grpc.RpcError) as err:
        stub.SelectChunks(to_proto("no-such-run", batch("x")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no-such-run" in err.value.details()
    before = stub.GetRun(pb.GetRunRequest(run_id=run))
    for msg, field in (
        (pb.ReportOutcomesRequest(run_id=run, selection_id="s", request_id="r",
                                  success_rate=float("nan")), "success_rate"),
        (pb.ReportOutcomesRequest(run_id=run, selection_id="s", request_id="r",
                                  success_rate=0.5, timings=pb.StageTimings(select_s=-1)),
         "timings.select_s"),
        (pb.ReportOutcomesRequest(run_id=run, selection_id="", request_id="r"), "selection_id"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stub.ReportOutcomes(msg)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(f"{field}:"), err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.PutRun(pb.PutRunRequest(run_id=run, config=pb.RunConfig(weighting="maybe")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("weighting:")
    assert stub.GetRun(pb.GetRunRequest(run_id=run)) == before


def test_health_and_reflection(grpc_client: Grpc) -> None:
    health = health_pb2_grpc.HealthStub(grpc_client.channel)
    for service in ("", "pcm.v1.ChunkSelector"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(grpc_client.channel)
    answers = list(reflect.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="pcm.v1.ChunkSelector"),
    ])))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"pcm.v1.ChunkSelector", "grpc.health.v1.Health"} <= names
    assert answers[1].file_descriptor_response.file_descriptor_proto


@pytest.mark.parametrize("score,weighting", [("signal", "mean"), ("signal", "ht"),
                                             ("action", "ht")])
def test_same_answers_as_embedded_and_http(server: ServerThread, grpc_client: Grpc,
                                           http: httpx.Client, score: str,
                                           weighting: str) -> None:
    """A fresh run with the same config gets the same masks and weights, select after select,
    through the embedded selector, HTTP JSON and gRPC float32 bytes, with either phase score
    (the signal score's reference sums included)."""
    config = {"feature_dim": 4, "seed": 11, "keep_fraction": 0.3, "score": score,
              "weighting": weighting}
    embedded = EmbeddedClient()
    embedded.put_run("parity", **config)
    for run in ("parity-http", "parity-grpc"):
        server.service.store.delete_run(run)
    http.put("/v1/runs/parity-http", json=config)
    grpc_client.stub.PutRun(pb.PutRunRequest(run_id="parity-grpc",
                                             config=pb.RunConfig(**config)))
    for step in range(3):
        body = batch(f"step-{step}", n=24, c=10, seed=step)
        want = embedded.select("parity", body)
        got_http = http.post("/v1/runs/parity-http/select", json=body).json()
        masks, weights = from_proto(grpc_client.stub.SelectChunks(to_proto("parity-grpc", body)))
        for i in range(len(want.masks)):
            assert np.array_equal(want.masks[i], masks[i])
            assert np.array_equal(want.masks[i], got_http["masks"][i])
            assert np.array_equal(want.weights[i], weights[i])
            assert np.array_equal(want.weights[i], got_http["weights"][i])
    want_info = embedded.get_run("parity")
    assert want_info.config.score == score and want_info.config.weighting == weighting
    # the phase scores moved the keep weights off uniform: the score really ran
    assert any(np.ptp(t.keep_probs) > 1e-3 for t in want_info.tasks.values())
    assert want_info.tasks == server.service.get_run("parity-http").tasks
    assert want_info.tasks == server.service.get_run("parity-grpc").tasks
    want_state = embedded.service.store.load("parity")
    for run in ("parity-http", "parity-grpc"):
        got_state = server.service.store.load(run)
        assert want_state is not None and got_state is not None
        for task, state in want_state.tasks.items():
            assert state.equals(got_state.tasks[task])
            assert (state.signal_ref is not None) == (score == "signal")


def test_convert_round_trips(server: ServerThread, grpc_client: Grpc) -> None:
    """The conversion helpers a gRPC client uses invert the server's."""
    body = SelectRequest.model_validate({**batch("rt", n=6, c=5), "keep_fraction": 0.5})
    msg = codec.select_request_to_proto("rt-run", body)
    assert len(msg.action_features) == 6 * 5 * 4 * 4 and msg.feature_dim == 4
    back = codec.select_request_from_proto(pb.SelectChunksRequest.FromString(
        msg.SerializeToString()))
    assert back.keep_fraction == 0.5 and back.request_id == "rt"
    for a, b in zip(body.trajectories, back.trajectories, strict=True):
        assert (a.task_id, a.group_id, a.success) == (b.task_id, b.group_id, b.success)
        assert np.array_equal(a.phase_ids, b.phase_ids)
        assert np.array_equal(a.action_features, b.action_features)
    grpc_client.stub.PutRun(pb.PutRunRequest(run_id="rt-run", config=pb.RunConfig(
        feature_dim=4)))
    resp = grpc_client.stub.SelectChunks(msg)
    answer = codec.select_response_from_proto(resp)
    assert answer.same_as(server.service.select("rt-run", body))  # the stored answer
    assert codec.select_response_to_proto(answer) == resp
    info = grpc_client.stub.GetRun(pb.GetRunRequest(run_id="rt-run"))
    assert codec.run_info_from_proto(info) == server.service.get_run("rt-run")
    assert any(s is None for t in server.service.get_run("rt-run").tasks.values()
               for s in t.scores)  # unobserved phases travel as NaN and come back as None
    rep = OutcomeReport.model_validate({"selection_id": "s", "request_id": "r",
                                        "success_rate": 0.25, "phase_grad_norms": [1.0, 2.0]})
    assert OutcomeReport.model_validate(codec.outcome_report_from_proto(
        codec.outcome_report_to_proto("rt-run", rep))) == rep


@pytest.mark.parametrize(("efficiency", "rate"), [(None, None), (0.6, None), (0.8, 1.25)])
def test_the_budgets_predictions_cross_the_wire(efficiency: float | None,
                                                rate: float | None) -> None:
    mask = np.array([True, False, True])
    answer = SelectResponse(selection_id="sel-1", state_version=3, masks=[mask],
                            weights=[mask * 2.0], kept_chunks=2, total_chunks=3,
                            skipped_trajectories=0, keep_probs={"t": [0.5, 0.5]},
                            keep_fraction=2 / 3, predicted_efficiency=efficiency,
                            predicted_rate=rate)
    back = codec.select_response_from_proto(codec.select_response_to_proto(answer))
    assert back.same_as(answer)
    assert (back.predicted_efficiency, back.predicted_rate) == (efficiency, rate)


def test_inline_selects_answer_as_threaded_ones(server: ServerThread, grpc_client: Grpc) -> None:
    """grpc_inline_select_chunks: selects up to that many chunks run on the event loop. They
    get the same masks, weights and state as the threaded path (the package server), the same
    idempotent replay, and a bad one the same INVALID_ARGUMENT naming the field; a larger
    select still goes to a thread and answers the same."""
    from tests.selector_service.conftest import _settings

    inline = ServerThread(_settings(grpc_inline_select_chunks=200)).start()
    try:
        with grpc.insecure_channel(inline.grpc_target) as channel:
            stub = pb_grpc.ChunkSelectorStub(channel)
            config = pb.RunConfig(feature_dim=4, seed=5, keep_fraction=0.3)
            server.service.store.delete_run("inline")
            for s in (stub, grpc_client.stub):
                s.PutRun(pb.PutRunRequest(run_id="inline", config=config))
            # 16 x 8 = 128 chunks run inline; 30 x 10 = 300 go to a thread
            for step, (n, c) in enumerate([(16, 8), (30, 10), (16, 8)]):
                msg = to_proto("inline", batch(f"s{step}", n=n, c=c, seed=step))
                got, want = stub.SelectChunks(msg), grpc_client.stub.SelectChunks(msg)
                assert got.masks == want.masks and got.weights == want.weights
                assert stub.SelectChunks(msg) == got  # the stored answer, replayed
            assert inline.service.get_run("inline").tasks == server.service.get_run(
                "inline").tasks
            bad = to_proto("inline", batch("bad", n=4, c=3), feature_dim=5)
            for s in (stub, grpc_client.stub):
                with pytest.raises(grpc.RpcError) as err:
                    s.SelectChunks(bad)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert dict(err.value.trailing_metadata())["pcm-error-field"] == (
                    "action_features")
            assert inline.service.get_run("inline").tasks == server.service.get_run(
                "inline").tasks
    finally:
        inline.stop()
