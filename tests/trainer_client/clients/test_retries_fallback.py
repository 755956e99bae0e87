"""Retries only where safe; the local fallback and the outcome-report queue."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from pcm_bench.servers import SelectorProcess, free_port
from pcm_contract.errors import InvalidArgument, NotFound, StoreUnavailable
from selector_service.core import ChunkBatch, RunConfig, select_with_keep_probs
from tests.trainer_client.clients.conftest import small_batch
from trainer_client import connect
from trainer_client.clients.errors import SelectorTimeout
from trainer_client.clients.http_transport import HttpClient

CONFIG: dict[str, Any] = {"phases": 3, "feature_dim": 4, "keep_fraction": 0.4, "seed": 3}
FAST = {"retries": 40, "backoff_s": 0.05, "max_backoff_s": 0.2}


def test_selector_that_comes_up_late(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    selector = SelectorProcess(log_dir=tmp_path)  # ports picked, process not started yet
    results: dict[str, object] = {}

    def trainer(url: str) -> None:
        # retried for up to ~80 s: the selector's start may take most of its 60 s readiness
        # wait on a loaded machine (its imports alone)
        with connect(url, **{**FAST, "retries": 400}) as client:
            run_id = f"late-{url[:4]}"
            client.put_run(run_id, **CONFIG)  # retried until the selector is up
            results[url] = client.select(run_id, small_batch("r0"))

    caplog.set_level(logging.INFO, logger="trainer_client.clients")
    threads = [threading.Thread(target=trainer, args=(url,))
               for url in (selector.grpc_url, selector.http_url)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    try:
        selector.start()
        for t in threads:
            t.join(90)
        assert sorted(results) == sorted([selector.grpc_url, selector.http_url])
        assert "retry" in caplog.text  # the first attempts failed and were retried
    finally:
        selector.stop()


def _select_counter(selector: SelectorProcess, transport: str, status: str) -> float:
    text = httpx.get(f"{selector.http_url}/metrics").text
    pattern = (rf'^pcm_select_requests_total\{{(?=[^}}]*transport="{transport}")'
               rf'(?=[^}}]*status="{status}")[^}}]*\}} ([0-9.e+]+)$')
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_bad_request_is_not_retried(memory_selector: SelectorProcess, transport: str) -> None:
    url = memory_selector.grpc_url if transport == "grpc" else memory_selector.http_url
    run_id = f"noretry-{transport}"
    with connect(url, retries=5, backoff_s=0.01) as client:
        client.put_run(run_id, **CONFIG)
        bad = small_batch("bad")
        bad["trajectories"][0]["phase_ids"] = np.full(len(bad["trajectories"][0]["phase_ids"]),
                                                      7)
        before = _select_counter(memory_selector, transport, "INVALID_ARGUMENT")
        missing = _select_counter(memory_selector, transport, "NOT_FOUND")
        with pytest.raises(InvalidArgument):
            client.select(run_id, bad)
        with pytest.raises(NotFound):
            client.select("never-created", small_batch("r"))
        assert _select_counter(memory_selector, transport, "INVALID_ARGUMENT") == before + 1
        assert _select_counter(memory_selector, transport, "NOT_FOUND") == missing + 1


def test_timeout_is_not_retried() -> None:
    """A selector that accepts connections but never answers: one attempt, SelectorTimeout."""
    accepted: list[socket.socket] = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.settimeout(0.1)
        stop = threading.Event()

        def accept() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    accepted.append(server.accept()[0])

        thread = threading.Thread(target=accept)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.getsockname()[1]}"
            with HttpClient(url, timeout_s=0.3, retries=3, backoff_s=0.01) as client:
                start = time.monotonic()
                with pytest.raises(SelectorTimeout):
                    client.get_run("r")
                assert time.monotonic() - start < 0.9
        finally:
            stop.set()
            thread.join()
            for conn in accepted:
                conn.close()
    assert len(accepted) == 1


def test_no_fallback_without_a_seen_config() -> None:
    with connect(f"grpc://127.0.0.1:{free_port()}", retries=1, backoff_s=0.01,
                 fallback=True) as client, pytest.raises(StoreUnavailable, match="never saw"):
        client.select("unseen", small_batch("r"))


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_fallback_selects_locally_and_replays_reports_once(tmp_path: Path,
                                                           transport: str) -> None:
    queue = tmp_path / "queue.jsonl"
    selector = SelectorProcess(log_dir=tmp_path).start()
    url = selector.grpc_url if transport == "grpc" else selector.http_url
    options = {"retries": 5, "backoff_s": 0.05, "max_backoff_s": 0.2, "fallback": True,
               "queue_path": queue}
    client = connect(url, **options)
    try:
        client.put_run("fb", **CONFIG)
        served = client.select("fb", small_batch("s0"))
        selector.stop()

        # Unreachable: local selection with the config and keep probabilities last seen.
        batch = small_batch("s1", seed=1)
        local = client.select("fb", batch)
        assert local.selection_id == "local-s1"
        assert local.state_version == served.state_version
        config = RunConfig(**CONFIG)
        trajs = batch["trajectories"]
        flat = ChunkBatch.from_trajectories(
            [t["task_id"] for t in trajs], [t["group_id"] for t in trajs],
            np.array([t["success"] for t in trajs]), [t["phase_ids"] for t in trajs],
            [t["action_features"] for t in trajs], config.phases, config.feature_dim)
        expected = select_with_keep_probs(config, flat, served.keep_probs, "s1")
        assert np.array_equal(np.concatenate(local.masks), expected.mask)
        assert np.array_equal(np.concatenate(local.weights), expected.weight)
        assert [m.shape[0] for m in local.masks] == [len(t["phase_ids"]) for t in trajs]

        reports = [{"selection_id": sel, "request_id": f"rep-{k}", "step": k,
                    "success_rate": 0.5} for k, sel in enumerate((served.selection_id,
                                                                   local.selection_id))]
        for report in reports:
            assert client.report_outcomes("fb", report).accepted
        assert client.pending_reports == 2
        journal = [json.loads(line) for line in queue.read_text().splitlines()]
        # The local selection (to be replayed with its masks) and the reports, in order.
        assert [(r["kind"], r["request"]["request_id"]) for r in journal] == [
            ("select", "s1"), ("report", "rep-0"), ("report", "rep-1")]
        # A second client on the same journal (a restarted trainer) sees the same queue.
        twin = connect(url, **options)
        assert twin.pending_reports == 2

        selector.start()  # memory store: the run is gone; create it again
        client.put_run("fb", **CONFIG)  # a successful call replays the queue, in order
        assert client.pending_reports == 0
        assert queue.read_text() == ""
        assert twin.flush() == 2  # the same reports again: the server dedupes on request_id
        info = client.get_run("fb")
        assert info.outcome_reports == 2
        assert client.flush() == 0
        twin.close()
    finally:
        client.close()
        selector.stop()
