"""`run_selector_bench` (what `pcm-bench selector --json PATH` writes): a tiny run, structure
only (no timing assertions)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pcm_bench.selector import ROW_FIELDS, SelectorBenchConfig, pin, run_selector_bench
from pcm_bench.servers import child_pids, wait_until


def test_selector_bench_rows() -> None:
    result = run_selector_bench(SelectorBenchConfig(
        transports="grpc,http", stores="memory,redis", clients="1,2", shapes="small",
        requests=4, warmup=1, time_cap_s=20, step_time_s=2.0, embedded_selects=0))
    json.dumps(result)  # serialisable as is
    assert result["benchmark"] == "selector"
    rows = result["rows"]
    cells = {(r["transport"], r["store"], r["clients"], r["shape"]) for r in rows}
    assert cells == {(t, s, c, "small") for t in ("grpc", "http") for s in ("memory", "redis")
                     for c in (1, 2)}
    for row in rows:
        assert set(ROW_FIELDS) <= set(row)
        assert row["dims"] == "64x32x56"
        assert row["errors"] == 0 and row["requests"] == 4
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["rps"] > 0
        assert math.isclose(row["select_share_of_step"], row["p50_ms"] / 1e3 / 2.0)


def test_selector_bench_workers_and_server_cpu() -> None:
    """`--workers 2` over Redis, and the server's CPU time per select (all its processes)."""
    result = run_selector_bench(SelectorBenchConfig(
        transports="grpc", stores="redis", clients="2", shapes="small", requests=8, warmup=1,
        time_cap_s=20, workers=2))
    assert result["settings"]["workers"] == 2
    (row,) = result["rows"]
    assert row["errors"] == 0 and row["requests"] == 8
    # /proc counts CPU time in clock ticks (10 ms), so a few selects may read as 0
    assert 0 <= row["server_cpu_ms"] < 10_000 and 0 <= row["redis_cpu_ms"] < 10_000


def test_selector_env_option_reaches_the_selector_and_is_checked(tmp_path: Path) -> None:
    """`pcm-bench selector --selector-env KEY=VALUE` sets the variable in the selector
    processes (here the inline select path) and records it; a malformed one is a usage error
    naming the option, before any server starts."""
    from typer.testing import CliRunner

    from pcm_bench.cli import app

    out = tmp_path / "sel.json"
    ok = CliRunner().invoke(app, [
        "selector", "--transports", "grpc", "--stores", "memory", "--clients", "1",
        "--shapes", "small", "--requests", "4", "--time-cap-s", "20",
        "--selector-env", "PCM_GRPC_INLINE_SELECT_CHUNKS=4096", "--json", str(out)])
    assert ok.exit_code == 0, ok.output
    result = json.loads(out.read_text())
    assert result["settings"]["selector_env"] == {"PCM_GRPC_INLINE_SELECT_CHUNKS": "4096"}
    assert result["rows"][0]["errors"] == 0
    bad = CliRunner().invoke(app, ["selector", "--selector-env", "NO_EQUALS_SIGN"])
    assert bad.exit_code == 2
    assert "--selector-env" in bad.output and "KEY=VALUE" in bad.output


def test_shared_run_rows_carry_the_embedded_reference() -> None:
    """`--shared-run`: one row per client count on one run, each with the embedded select's
    CPU per select of the same batch (measured twice, in a process of its own), the server's
    CPU per select over it, and the bare gRPC transport's floor for the same messages."""
    result = run_selector_bench(SelectorBenchConfig(
        transports="grpc", stores="redis", clients="1,3", shapes="small", requests=6, warmup=1,
        time_cap_s=20, shared_run=True, embedded_selects=5))
    assert result["settings"]["shared_run"] is True
    rows = result["rows"]
    assert [r["clients"] for r in rows] == [1, 3]
    for row in rows:
        assert set(ROW_FIELDS) <= set(row)
        assert row["errors"] == 0 and row["requests"] == 6
        runs = row["embedded_cpu_ms_runs"]
        assert len(runs) == 2 and all(x > 0 for x in runs)
        assert math.isclose(row["embedded_cpu_ms"], sum(runs) / 2)
        assert math.isclose(row["cpu_ratio"], row["server_cpu_ms"] / row["embedded_cpu_ms"])
        floor = row["grpc_floor_cpu_ms_runs"]
        assert len(floor) == 2 and all(x > 0 for x in floor)
        assert math.isclose(row["floor_ratio"],
                            1 + sum(floor) / 2 / row["embedded_cpu_ms"])


def test_pin_puts_every_thread_of_a_process_tree_on_the_cpus() -> None:
    """`--server-cpus`' pinning: every thread of the process and of its children."""


    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs to pin to one of them")
    tree = ("import subprocess, sys, threading, time\n"
            "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print('up', flush=True); time.sleep(60)\n")
    with subprocess.Popen([sys.executable, "-c", tree], stdout=subprocess.PIPE,
                          text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
            wait_until(lambda: child_pids(proc.pid), 10, "child process")
            children = child_pids(proc.pid)
            assert children
            pin(proc.pid, {cpus[-1]})
            tasks = [int(t.name) for p in (proc.pid, *children)
                     for t in Path(f"/proc/{p}/task").iterdir()]
            assert len(tasks) >= 3  # the main thread, its sleeping thread, the child
            assert all(os.sched_getaffinity(t) == {cpus[-1]} for t in tasks)
        finally:
            for child in child_pids(proc.pid):
                os.kill(child, 9)
            proc.kill()


def test_server_cpus_must_leave_cpus_to_the_clients() -> None:

    every = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    with pytest.raises(ValueError, match="--server-cpus"):
        SelectorBenchConfig(server_cpus=every)
    with pytest.raises(ValueError, match="--server-cpus"):
        SelectorBenchConfig(server_cpus="4096")
    one = min(os.sched_getaffinity(0))
    if len(os.sched_getaffinity(0)) > 1:
        server, clients = SelectorBenchConfig(server_cpus=str(one)).cpu_sets()  # type: ignore[misc]
        assert server == {one} and one not in clients
