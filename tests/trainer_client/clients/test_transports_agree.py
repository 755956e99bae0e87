"""One batch through the embedded, gRPC and HTTP selectors gives identical answers, and every
transport raises the same project exceptions."""

from __future__ import annotations

import numpy as np
import pytest

from pcm_bench.servers import SelectorProcess
from pcm_contract.errors import InvalidArgument, NotFound, Unauthenticated
from pcm_contract.models import SelectRequest
from tests.trainer_client.clients.conftest import small_batch
from trainer_client import SelectorClient, connect

CONFIG = {"phases": 3, "feature_dim": 4, "keep_fraction": 0.4, "seed": 7}


def _answers(client: SelectorClient, run_id: str) -> list:
    client.put_run(run_id, **CONFIG)
    answers = [client.select(run_id, small_batch(f"req-{k}", seed=k)) for k in range(3)]
    # A model and the dict of its shape are the same request (a replay here).
    answers.append(client.select(run_id, SelectRequest.model_validate(small_batch("req-0"))))
    info = client.get_run(run_id)
    client.delete_run(run_id)
    return [*answers, info]


def test_embedded_grpc_http_identical(memory_selector: SelectorProcess) -> None:
    results = {}
    for url in ("embedded", memory_selector.grpc_url, memory_selector.http_url):
        with connect(url) as client:
            assert isinstance(client, SelectorClient)
            results[url] = _answers(client, "agree")
    reference = results.pop("embedded")
    for url, result in results.items():
        *answers, info = result
        for ref, got in zip(reference[:-1], answers, strict=True):
            assert got.same_as(ref), url
            for m, w in zip(got.masks, got.weights, strict=True):
                assert m.dtype == np.bool_ and w.dtype == np.float64
        # store_epoch names the store the answer came from (each process has its own)
        assert (info.model_dump(exclude={"store_epoch"})
                == reference[-1].model_dump(exclude={"store_epoch"})), url
    first = reference[0]
    batch = small_batch("req-0")
    assert [m.shape[0] for m in first.masks] == [len(t["phase_ids"]) for t in batch["trajectories"]]
    assert answers[3].same_as(answers[0])  # the replay


@pytest.mark.parametrize("transport", ["embedded", "grpc", "http"])
def test_errors_map_to_project_exceptions(memory_selector: SelectorProcess,
                                          transport: str) -> None:
    url = {"embedded": "embedded", "grpc": memory_selector.grpc_url,
           "http": memory_selector.http_url}[transport]
    run_id = f"errors-{transport}"
    with connect(url) as client:
        client.put_run(run_id, **CONFIG)
        bad = small_batch("bad")
        bad["trajectories"][2]["phase_ids"] = np.full(len(bad["trajectories"][2]["phase_ids"]), 5)
        with pytest.raises(InvalidArgument) as exc_info:
            client.select(run_id, bad)  # caught by the core, on the server
        assert exc_info.value.field == "trajectories[2].phase_ids"
        assert "outside [0, 3)" in exc_info.value.message
        with pytest.raises(InvalidArgument) as exc_info:
            client.put_run(run_id, keep_fraction=2.0)
        assert exc_info.value.field == "keep_fraction"
        with pytest.raises(NotFound):
            client.select("no-such-run", small_batch("r"))
        with pytest.raises(NotFound):
            client.get_run("no-such-run")
        client.delete_run(run_id)


def test_bearer_token() -> None:
    with SelectorProcess(env={"PCM_AUTH_TOKENS": "s3cret,other"}) as selector:
        for url in (selector.grpc_url, selector.http_url):
            with connect(url, token="s3cret") as client:
                assert client.put_run("auth", **CONFIG).config.phases == 3
                assert client.select("auth", small_batch(f"a-{url[:4]}")).kept_chunks > 0
            for token in (None, "wrong"):
                with connect(url, token=token) as client, pytest.raises(Unauthenticated):
                    client.get_run("auth")
