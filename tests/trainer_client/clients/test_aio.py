"""The asyncio clients: `connect_async(url)` with the same methods as coroutines."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pcm_bench.servers import SelectorProcess
from pcm_contract.errors import InvalidArgument, NotFound
from tests.trainer_client.clients.conftest import small_batch
from trainer_client import connect
from trainer_client.clients.aio import (
    AsyncGrpcClient,
    AsyncHttpClient,
    AsyncSelectorClient,
    connect_async,
)

CONFIG = {"phases": 3, "feature_dim": 4, "keep_fraction": 0.4, "seed": 9}


@pytest.mark.parametrize("transport", ["embedded", "grpc", "http"])
async def test_concurrent_selects(memory_selector: SelectorProcess, transport: str) -> None:
    url = {"embedded": "embedded", "grpc": memory_selector.grpc_url,
           "http": memory_selector.http_url}[transport]
    run_id = f"async-{transport}"
    client = connect_async(url)
    assert isinstance(client, AsyncSelectorClient)
    expected_type = {"grpc": AsyncGrpcClient, "http": AsyncHttpClient}.get(transport)
    if expected_type is not None:
        assert isinstance(client, expected_type)
    async with client:
        await client.put_run(run_id, **CONFIG)
        batches = [small_batch(f"a{k}", seed=k) for k in range(6)]
        answers = await asyncio.gather(*(client.select(run_id, b) for b in batches))
        info = await client.get_run(run_id)
        assert info.state_version == 6
        assert sorted(a.state_version for a in answers) == list(range(1, 7))
        for batch, answer in zip(batches, answers, strict=True):
            assert [m.shape[0] for m in answer.masks] == [
                len(t["phase_ids"]) for t in batch["trajectories"]]
        ack = await client.report_outcomes(run_id, {"selection_id": answers[0].selection_id,
                                                    "request_id": "rep", "success_rate": 1.0})
        assert ack.accepted
        with pytest.raises(InvalidArgument):
            await client.put_run(run_id, eps=-1)
        bad = small_batch("bad")
        bad["trajectories"][1]["phase_ids"] = bad["trajectories"][1]["phase_ids"] + 5
        with pytest.raises(InvalidArgument) as exc_info:  # found by the server's core
            await client.select(run_id, bad)
        assert exc_info.value.field == "trajectories[1].phase_ids"
        if transport != "embedded":
            # The sync client replays the same request_ids: the stored answers.
            with connect(url) as sync:
                assert sync.select(run_id, batches[3]).same_as(answers[3])
        assert (await client.delete_run(run_id)).deleted
        with pytest.raises(NotFound):
            await client.get_run(run_id)


async def test_async_fallback_selects_locally_then_replays(tmp_path: Path) -> None:
    selector = SelectorProcess(log_dir=tmp_path).start()
    client = AsyncHttpClient(selector.http_url, retries=4, backoff_s=0.05, max_backoff_s=0.2,
                             fallback=True)
    try:
        await client.put_run("async-fallback", **CONFIG)
        served = await client.select("async-fallback", small_batch("f0"))
        selector.stop()
        local = await client.select("async-fallback", small_batch("f1", seed=1))
        assert local.selection_id == "local-f1"
        assert local.state_version == served.state_version
        await client.report_outcomes("async-fallback", {"selection_id": local.selection_id,
                                                        "request_id": "q", "success_rate": 0})
        assert client.pending_reports == 1
        assert await client.flush() == 0  # still unreachable: stays queued
        assert client.pending_reports == 1
        selector.start()  # memory store: create the run again; that success replays the queue
        await client.put_run("async-fallback", **CONFIG)
        assert client.pending_reports == 0
        assert (await client.get_run("async-fallback")).outcome_reports == 1
    finally:
        await client.close()
        selector.stop()


def test_each_async_client_takes_its_transports_urls() -> None:
    with pytest.raises(ValueError, match="AsyncGrpcClient is for grpc urls"):
        AsyncGrpcClient("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="unknown selector url"):
        connect_async("ftp://127.0.0.1:1")
