"""The HTTP client sends a Select as the protobuf message (Content-Type and Accept
application/x-protobuf) and reads the protobuf answer, over a real server: the answers are the
JSON form's, errors still name the field, and a batch whose rows do not line up with its
phase ids is refused before anything is sent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from pcm_contract.errors import InvalidArgument, NotFound
from pcm_contract.models import SelectRequest
from selector_service.settings import Settings
from tests.fixtures.servers import ServerThread
from tests.trainer_client.clients.conftest import small_batch
from trainer_client import connect
from trainer_client.clients.http_transport import (
    PROTOBUF,
    HttpClient,
    select_answer,
    select_answer_message,
    select_body,
    select_message_body,
)

CONFIG = {"phases": 3, "feature_dim": 4, "keep_fraction": 0.4, "seed": 7}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    settings: dict[str, Any] = {"host": "127.0.0.1", "grpc_port": 0, "http_port": 0,
                                "auth_tokens": "", "grace_period_s": 1.0, "worker_threads": 4}
    srv = ServerThread(Settings(**settings)).start()
    yield srv
    srv.stop()


def _recording(client: HttpClient) -> list[httpx.Request]:
    """The requests the client sends from now on (an httpx event hook on its pool)."""
    sent: list[httpx.Request] = []
    client._http.event_hooks["request"].append(sent.append)
    return sent


def test_select_travels_as_protobuf_and_answers_as_json_would(server: ServerThread) -> None:
    with connect(server.http_url, retries=0) as client, \
            httpx.Client(base_url=server.http_url, timeout=30) as http:
        assert isinstance(client, HttpClient)
        client.put_run("pb-client", **CONFIG)
        http.put("/v1/runs/pb-json", json=CONFIG)
        sent = _recording(client)
        for k in range(3):
            batch = small_batch(f"req-{k}", seed=k)
            answer = client.select("pb-client", batch)
            request = SelectRequest.model_validate(batch)
            by_json = select_answer(http.post("/v1/runs/pb-json/select",
                                              content=select_body(request)).content)
            # the same answer (the selection id is derived from the run id too)
            assert answer.same_as(by_json.model_copy(update={"selection_id":
                                                             answer.selection_id}))
            for arr in (*answer.masks, *answer.weights):
                assert not arr.flags.writeable
            assert answer.masks[0].dtype == np.bool_ and answer.weights[0].dtype == np.float64
        selects = [r for r in sent if r.url.path.endswith("/select")]
        assert len(selects) == 3
        for r in selects:
            assert r.headers["content-type"] == PROTOBUF and r.headers["accept"] == PROTOBUF
        # Reports and run calls stay JSON.
        ack = client.report_outcomes("pb-client", {"selection_id": answer.selection_id,
                                                   "request_id": "rep-0", "success_rate": 0.5})
        assert ack.accepted
        assert sent[-1].headers["content-type"] == "application/json"


def test_protobuf_body_helpers_round_trip(server: ServerThread) -> None:
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        http.put("/v1/runs/pb-helpers", json=CONFIG)
        request = SelectRequest.model_validate(small_batch("helpers-1"))
        r = http.post("/v1/runs/pb-helpers/select",
                      content=select_message_body("pb-helpers", request),
                      headers={"content-type": PROTOBUF, "accept": PROTOBUF})
        assert r.status_code == 200 and r.headers["content-type"] == PROTOBUF
        answer = select_answer_message(r.content)
        assert [m.shape[0] for m in answer.masks] == [len(t.phase_ids)
                                                      for t in request.trajectories]
        # The JSON form of the same request is a replay: the stored answer.
        replay = select_answer(http.post("/v1/runs/pb-helpers/select",
                                         content=select_body(request)).content)
        assert replay.same_as(answer)


def test_errors_name_the_field_and_bad_rows_are_not_sent(server: ServerThread) -> None:
    with connect(server.http_url, retries=0) as client:
        assert isinstance(client, HttpClient)
        client.put_run("pb-errors", **CONFIG)
        sent = _recording(client)
        batch = small_batch("bad-rows")
        batch["trajectories"][2]["action_features"] = batch["trajectories"][2][
            "action_features"][:-1]
        with pytest.raises(InvalidArgument) as exc:
            client.select("pb-errors", batch)
        assert exc.value.field == "trajectories[2].action_features"
        assert sent == []  # refused before sending
        batch = small_batch("bad-phase")
        batch["trajectories"][1]["phase_ids"] = batch["trajectories"][1]["phase_ids"] + 5
        with pytest.raises(InvalidArgument) as exc:
            client.select("pb-errors", batch)
        assert exc.value.field == "trajectories[1].phase_ids"
        with pytest.raises(NotFound):
            client.select("pb-no-such-run", small_batch("lost"))
        assert client.get_run("pb-errors").state_version == 0  # nothing stored
