"""`pcm-selector serve --workers 2` as real processes over a real redis-server:

- 2 workers x 8 concurrent clients (4 gRPC, 4 HTTP, a new connection per call, so the kernel
  spreads them over both workers): state_version, outcome reports and per-(task, phase) chunk
  counts are exact afterwards, and both workers served selections;
- /metrics, on whichever worker answers, is the sum over workers: the Select counter equals the
  selections made, and equals the sum of the per-worker counts read from each worker's own
  multiprocess file; gauges come once (no pid label); a deleted run's series go;
- SIGTERM to the parent drains every worker: a Select in flight completes, every worker exits,
  the parent exits 0;
- a worker that dies (SIGKILL) is replaced, and its counts stay in /metrics' sums;
- the memory store refuses more than one worker, naming the setting.

About 30 s on 2 busy cores (each serve spawns 2 interpreters).
    python -m pytest tests/selector_service/test_workers.py -q
"""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from pcm_bench.servers import SelectorProcess
from pcm_contract.gen.pcm.v1 import selector_pb2_grpc as pb_grpc
from selector_service.settings import Settings, available_cores
from tests.selector_service.conftest import GRPC_OPTIONS, batch, big_select
from tests.selector_service.exact_counts import assert_exact, run_clients
from trainer_client import connect

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 8
STEPS = 6
WORKERS = 2
ANNOUNCED = re.compile(r"with (\d+) workers \(pids ([\d ]+); metrics of all workers in (\S+)\)")


def announced(selector: SelectorProcess, timeout: float = 30.0) -> tuple[list[int], str]:
    """The worker pids and the metrics directory, from the parent's "serving" log line."""
    deadline = time.monotonic() + timeout
    while True:
        match = ANNOUNCED.search(selector.log_path.read_text(errors="replace"))
        if match:
            return [int(p) for p in match.group(2).split()], match.group(3)
        assert time.monotonic() < deadline, "the parent never announced its workers"
        time.sleep(0.05)


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called `name` in an exposition, by its sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def per_worker_selects(metrics_dir: str) -> dict[int, float]:
    """OK Select calls per worker pid, read from each worker's own counter file."""
    out = {}
    for path in glob.glob(os.path.join(metrics_dir, "counter_*.db")):
        pid = int(Path(path).stem.rsplit("_", 1)[1])
        total = 0.0
        for metric in MultiProcessCollector.merge([path], accumulate=True):
            for sample in metric.samples:
                if (sample.name == "pcm_select_requests_total"
                        and sample.labels.get("status") == "OK"):
                    total += sample.value
        out[pid] = total
    return out


def test_two_workers_share_state_exactly_and_metrics_sum(redis_url: str, tmp_path: Path) -> None:
    with SelectorProcess(store="redis", redis_url=redis_url, workers=WORKERS, log_level="INFO",
                         log_dir=tmp_path) as selector:
        pids, metrics_dir = announced(selector)
        assert len(pids) == WORKERS and os.getpid() not in pids
        with connect(selector.http_url) as admin:
            admin.put_run("shared", phases=4, feature_dim=4, keep_fraction=0.25, seed=3)
        urls = [selector.grpc_url if i % 2 else selector.http_url for i in range(CLIENTS)]
        trained = run_clients([(url, "shared") for url in urls], STEPS)
        with connect(selector.http_url) as admin:
            assert_exact(admin.get_run("shared"), trained)

        made = CLIENTS * STEPS
        text = httpx.get(f"{selector.http_url}/metrics").text
        selects = samples(text, "pcm_select_requests_total")
        ok = {dict(k)["transport"]: v for k, v in selects.items() if dict(k)["status"] == "OK"}
        assert ok == {"grpc": made / 2, "http": made / 2}
        assert sum(v for k, v in selects.items() if dict(k)["status"] != "OK") == 0
        # Both workers served selections, and /metrics is the sum of their own counts.
        by_worker = per_worker_selects(metrics_dir)
        assert set(by_worker) == set(pids), (by_worker, pids)
        assert all(n > 0 for n in by_worker.values()), by_worker
        assert sum(by_worker.values()) == made
        # Counters of the run: summed over workers.
        reports = samples(text, "pcm_outcome_reports_total")
        assert reports[(("run", "shared"), ("status", "accepted"))] == made
        chunks = samples(text, "pcm_chunks_total")
        assert sum(chunks.values()) == made * 16 * 8  # 16 trajectories x 8 chunks a batch
        # Gauges: one series (the most recent value), no pid label.
        rate = samples(text, "pcm_selection_rate")
        assert list(rate) == [(("run", "shared"),)]
        assert "pid=" not in text

        # A run selected and deleted through one connection (so one worker): its series go
        # from the aggregate, whichever worker renders it.
        with httpx.Client(base_url=selector.http_url, timeout=30) as http:
            assert http.put("/v1/runs/gone", json={"feature_dim": 4}).status_code == 200
            for k in range(3):
                assert http.post("/v1/runs/gone/select",
                                 json=batch(f"gone-{k}")).status_code == 200
            assert 'run="gone"' in http.get("/metrics").text
            assert http.delete("/v1/runs/gone").status_code == 200
        for _ in range(6):  # new connections: both workers render it
            text = httpx.get(f"{selector.http_url}/metrics").text
            assert 'run="gone"' not in text
            assert samples(text, "pcm_outcome_reports_total")[
                (("run", "shared"), ("status", "accepted"))] == made
        assert selector.stop() == 0



def test_sigterm_drains_every_worker(redis_url: str, tmp_path: Path) -> None:
    selector = SelectorProcess(store="redis", redis_url=redis_url, workers=WORKERS,
                               log_level="DEBUG", grace_period_s=30.0, log_dir=tmp_path)
    try:
        selector.start()
        pids, _ = announced(selector)
        assert httpx.put(f"{selector.http_url}/v1/runs/drain",
                         json={"feature_dim": 56}).status_code == 200
        result: dict[str, Any] = {}
        with grpc.insecure_channel(f"127.0.0.1:{selector.grpc_port}",
                                   options=GRPC_OPTIONS) as channel:
            def select() -> None:
                stub = pb_grpc.ChunkSelectorStub(channel)
                try:
                    result["answer"] = stub.SelectChunks(big_select("drain", 2048), timeout=120)
                except grpc.RpcError as exc:
                    result["error"] = exc

            caller = threading.Thread(target=select, daemon=True)
            caller.start()
            deadline = time.monotonic() + 60
            while "select run=drain" not in selector.log_path.read_text(errors="replace"):
                assert time.monotonic() < deadline, "the select never reached a worker"
                assert caller.is_alive(), result
                time.sleep(0.02)
            assert selector.proc is not None
            parent = selector.proc
            parent.send_signal(signal.SIGTERM)
            caller.join(120)
        assert "error" not in result, result.get("error")
        assert result["answer"].total_chunks == 2048 * 64
        assert parent.wait(60) == 0, selector.log_path.read_text()[-3000:]
        for pid in pids:  # every worker is gone (reaped by the parent)
            assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), pid
        log = selector.log_path.read_text()
        assert log.count("selector_service.server: stopped") == WORKERS
        assert "stopping 2 workers" in log
    finally:
        selector.kill()
        selector.close()


def test_a_dead_worker_is_replaced_and_its_counts_stay(redis_url: str, tmp_path: Path) -> None:
    with SelectorProcess(store="redis", redis_url=redis_url, workers=WORKERS, log_level="INFO",
                         log_dir=tmp_path) as selector:
        pids, _ = announced(selector)
        with connect(selector.http_url) as admin:
            admin.put_run("phoenix", phases=4, feature_dim=4)
        first = run_clients([(selector.http_url, "phoenix")] * 2, 4, report=False)
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while "while serving: starting another" not in selector.log_path.read_text():
            assert time.monotonic() < deadline, selector.log_path.read_text()[-3000:]
            time.sleep(0.05)
        selector.wait_up()  # both ports have two listeners again
        again = run_clients([(selector.http_url, "phoenix")] * 2, 4, first_index=2,
                            report=False)
        with connect(selector.http_url) as admin:
            info = admin.get_run("phoenix")
        assert_exact(info, first + again)
        text = httpx.get(f"{selector.http_url}/metrics").text
        ok = samples(text, "pcm_select_requests_total")[
            (("status", "OK"), ("transport", "http"))]
        assert ok == 16  # the dead worker's selects included
        assert selector.stop() == 0


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("how", ["flag", "env"])
def test_memory_store_refuses_several_workers(how: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCM_")}
    args = ["--workers", "2"] if how == "flag" else []
    if how == "env":
        env["PCM_WORKERS"] = "2"
    out = subprocess.run([sys.executable, "-m", "selector_service.cli", "serve", *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    message = " ".join(re.sub("[│╭╮╰╯─]", " ", out.stderr).split())  # rich's error box
    for part in ("workers=2", "PCM_WORKERS", "--workers", "store=redis", "PCM_STORE"):
        assert part in message, message


def test_worker_count_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("PCM_WORKERS", "PCM_STORE"):
        monkeypatch.delenv(var, raising=False)
    assert Settings().worker_count == 1  # memory store: one process
    assert Settings(store="redis").worker_count == available_cores() >= 1
    assert Settings(store="redis", workers=3).worker_count == 3
    assert Settings(store="memory", workers=1).worker_count == 1
    with pytest.raises(ValidationError, match="PCM_WORKERS"):
        Settings(store="memory", workers=2)
