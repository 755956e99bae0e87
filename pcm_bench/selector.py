"""`pcm-bench selector`: Select latency (p50/p99) and throughput of a real `pcm-selector serve`
over gRPC and HTTP, on the memory and Redis stores, with 1..16 concurrent trainers (threads,
each with its own client), on two batch shapes (docs/design.md, "Measured claims"):

- small: 64 trajectories x 32 chunks, D 56;
- libero: one full LIBERO GRPO step, 512 trajectories (64 initial states x group 8) x 64 chunks,
  D 56 (1.8 M features, ~7.3 MB over gRPC).

It starts its own redis-server and selector processes on free 127.0.0.1 ports. A timed call is
the trainer's whole `client.select(run_id, request)`: encoding, transport, the server's decoding,
validation, selection, the store's round trips, and decoding the answer into NumPy arrays.
Each trainer selects on its own run unless `shared_run` (then all contend on one run's state).
Every cell is bounded: `requests` timed selects in all (split across the clients) and a
`time_cap_s` wall-clock cap.

Server CPU per select (`server_cpu_ms`): the CPU time (user + system, from /proc) the selector
processes (the server and its workers) spent during the cell's timed selects, divided by them;
`redis_cpu_ms` the same for redis-server. `workers` runs the Redis selector with
`pcm-selector serve --workers N` (the memory store serves from one process).

The reference (`embedded_cpu_ms`, per shape): the CPU time of the embedded select of the same
batch (`connect("embedded")`: validation, selection, the in-memory store), in a process of its
own with the selector's environment (so the same code and BLAS threads), measured before and
after the shape's cells and averaged; each row's `cpu_ratio` is its server CPU per select over
it. With `shared_run` every client selects on one run, so the rows say what a select costs as
more trainers share a run (`pcm-bench selector --shared-run --clients 1,8,32`).

The transport's floor (`grpc_floor_cpu_ms`, per shape, gRPC rows): the server CPU per call of a
bare `grpc.aio` server that receives the shape's serialized request and sends a serialized
answer of the same batch back, with no decoding and no work, measured like the reference.
`floor_ratio` = (embedded + floor) / embedded is the lowest `cpu_ratio` that any gRPC server
doing the embedded select's work could show on this machine.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pcm_bench.core import Shape, synthetic_request
from pcm_bench.options import as_paths, at_least, json_option, one_of, positive, split
from pcm_bench.servers import RedisServer, SelectorProcess, child_pids
from pcm_contract.models import SelectRequest
from trainer_client.train.config import opt

SHAPES: dict[str, Shape] = {"small": Shape(64, 32, 56), "libero": Shape(512, 64, 56)}
DEFAULT_REQUESTS = {"small": 400, "libero": 48}
TARGETS = {
    "grpc_redis_small_16_clients_p99_ms": 20.0,
    "grpc_libero_p50_ms": 150.0,
    "select_share_of_step": 0.02,
}
ROW_FIELDS = ("transport", "store", "clients", "shape", "p50_ms", "p99_ms", "rps",
              "server_cpu_ms", "embedded_cpu_ms", "cpu_ratio")
EMBEDDED_SELECTS = {"small": 300, "libero": 12}  # per measurement of the embedded reference
FLOOR_CALLS = {"small": 2000, "libero": 60}  # per measurement of the bare gRPC floor


@dataclass
class SelectorBenchConfig:
    """`pcm-bench selector`: its flags are these fields (`trainer_client.cli_options`)."""

    json_path: Path | None = field(default=None, metadata=json_option())
    transports: str = opt("grpc,http", "comma-separated: grpc,http")
    stores: str = opt("memory,redis", "comma-separated: memory,redis")
    clients: str = opt("1,4,16", "concurrent clients per cell")
    shapes: str = opt("small,libero", "small (64x32x56), libero (512x64x56)")
    requests: int | None = opt(None, "timed selects per cell")
    interval_s: float = opt(0.0, "0: closed loop (saturation); >0: each client selects once "
                            "per interval")
    time_cap_s: float = opt(30.0, "time cap per cell")
    step_time_s: float | None = opt(None, "an RL step's duration, to report selection's share "
                                    "of it")
    workers: int = opt(1, "worker processes of the Redis selector (pcm-selector serve "
                       "--workers)")
    shared_run: bool = opt(False, "all clients select on one run (contend on its state): one "
                           "row per --clients value says what a select costs as more trainers "
                           "share a run")
    embedded_selects: int | None = opt(None, "embedded selects per measurement of the "
                                       "reference CPU per select (before and after each "
                                       "shape's cells; default 300 small, 12 libero; 0: none)")
    selector_env: list[str] | None = field(default=None, metadata={
        "help": "KEY=VALUE set in the selector processes' environment (repeatable), e.g. "
                "PCM_GRPC_INLINE_SELECT_CHUNKS=0"})
    server_cpus: str | None = opt(None, "CPUs (comma-separated) for the selector processes, "
                                  "the embedded reference and the gRPC floor server; the "
                                  "clients and redis-server get the other CPUs, as trainers "
                                  "on other machines would (default: no pinning)")
    warmup: int = opt(2, "untimed selects per client first", cli=False)

    def __post_init__(self) -> None:
        as_paths(self, "json_path")
        self.cpu_sets()
        transports, stores, clients, shapes = self.cells()
        one_of("transports", transports, ("grpc", "http"))
        one_of("stores", stores, ("memory", "redis"))
        one_of("shapes", shapes, tuple(SHAPES))
        if not clients:
            raise ValueError(f"--clients {self.clients!r}: give at least one count, e.g. 1,4")
        positive(self, "step_time_s")
        at_least(self, interval_s=0, workers=1, warmup=0)
        if self.embedded_selects is not None:
            at_least(self, embedded_selects=0)
        _key_values(self.selector_env)

    def cells(self) -> tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
        """The matrix's axes: (transports, stores, client counts, shapes), from their flags."""
        return (split(self.transports, str, "transports"), split(self.stores, str, "stores"),
                split(self.clients, int, "clients"), split(self.shapes, str, "shapes"))

    def cpu_sets(self) -> tuple[set[int], set[int]] | None:
        """(the server's CPUs, the clients' CPUs) from --server-cpus; None: no pinning."""
        if self.server_cpus is None:
            return None
        server = set(split(self.server_cpus, int, "server_cpus"))
        available = os.sched_getaffinity(0)
        if not server or not server < available:
            raise ValueError(f"--server-cpus {self.server_cpus!r}: name some but not all of "
                             f"this process's CPUs {sorted(available)}, e.g. --server-cpus "
                             f"{max(available)}")
        return server, available - server

    @property
    def env_vars(self) -> dict[str, str]:
        """--selector-env as a dict."""
        return _key_values(self.selector_env)


def _key_values(items: list[str] | None) -> dict[str, str]:
    """--selector-env's KEY=VALUE strings as a dict; a malformed one is an error naming it."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--selector-env {item!r}: use KEY=VALUE")
        out[key] = value
    return out


def run_selector_bench(config: SelectorBenchConfig,
                       progress: Callable[[dict[str, Any]], None] | None = None
                       ) -> dict[str, Any]:
    """Measure every (transport, store, clients, shape) cell; returns
    ``{"benchmark": "selector", "settings": {...}, "targets": {...}, "rows": [...]}``.

    Rows hold ``transport, store, clients, shape, p50_ms, p99_ms, rps`` and also ``dims``
    (NxCxD), ``requests`` (timed selects completed), ``errors``, ``mean_ms``, ``capped`` (the
    time cap cut the cell short) and ``select_share_of_step`` (p50 / `step_time_s`; None when
    no step time is given). `requests` is per cell (default 400 small, 48 libero); each client
    also makes `warmup` untimed selects first. `interval_s` 0 (default) is a closed loop: each
    trainer selects again as soon as it has its answer, so with many clients the cell measures
    the selector at saturation (latency ~ clients / throughput). `interval_s` > 0 paces each
    trainer to one select per interval (random phase), like trainers selecting once per RL
    step. `selector_env` adds environment variables to the selector processes (e.g.
    ``{"OPENBLAS_NUM_THREADS": "1"}``). `workers`: worker processes of the Redis selector
    (`--workers`). Rows also hold ``server_cpu_ms`` / ``redis_cpu_ms``: CPU time of the
    selector processes / redis-server per timed select, ``embedded_cpu_ms`` (the shape's
    embedded select, see the module's docstring; `embedded_selects` per measurement, 0: not
    measured) and ``cpu_ratio`` = server_cpu_ms / embedded_cpu_ms; gRPC rows also
    ``grpc_floor_cpu_ms`` (a bare gRPC server's CPU per call for the same request and answer;
    `embedded_selects` calls per measurement where given) and ``floor_ratio`` = (embedded +
    floor) / embedded, the lowest ratio a gRPC server could reach. `progress` is called with
    each row.
    """
    c = config
    transports, stores, clients, shapes = c.cells()
    requests, warmup, time_cap_s, step_time_s = c.requests, c.warmup, c.time_cap_s, c.step_time_s
    shared_run, interval_s, workers = c.shared_run, c.interval_s, c.workers
    selector_env, embedded_selects = c.env_vars, c.embedded_selects
    cpus = c.cpu_sets()
    server_cpus = None if cpus is None else cpus[0]
    own_cpus = os.sched_getaffinity(0)
    if cpus is not None:  # the clients (and the servers started from here, until re-pinned)
        pin(os.getpid(), cpus[1])

    templates = {name: SelectRequest.model_validate(synthetic_request(SHAPES[name]))
                 for name in shapes}
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        selectors: dict[str, SelectorProcess] = {}
        redis_pids: dict[str, int | None] = {}
        for store in stores:
            redis_url = None
            redis_pids[store] = None
            if store == "redis":
                redis = stack.enter_context(RedisServer())
                redis_url, redis_pids[store] = redis.url, redis.pid
            selectors[store] = stack.enter_context(
                SelectorProcess(store=store, redis_url=redis_url, env=selector_env,
                                workers=workers if store == "redis" else 1))
            selector_pid = selectors[store].pid
            if server_cpus is not None and selector_pid is not None:
                pin(selector_pid, server_cpus)
        cell = 0
        embedded: dict[str, list[float]] = {}
        for shape in shapes:
            total = requests if requests is not None else DEFAULT_REQUESTS[shape]
            selects = (EMBEDDED_SELECTS[shape] if embedded_selects is None
                       else embedded_selects)
            embedded[shape] = ([embedded_cpu_ms(shape, selects, selector_env, server_cpus)]
                               if selects else [])
            floor: list[float] = []
            if selects and "grpc" in transports:
                calls = FLOOR_CALLS[shape] if embedded_selects is None else embedded_selects
                floor.append(grpc_floor_cpu_ms(shape, calls, selector_env, server_cpus))
            shape_rows: list[dict[str, Any]] = []
            for store in stores:
                for transport in transports:
                    for n_clients in clients:
                        selector = selectors[store]
                        url = selector.grpc_url if transport == "grpc" else selector.http_url
                        cell += 1
                        row = {"transport": transport, "store": store, "clients": n_clients,
                               "shape": shape, "dims": SHAPES[shape].label(),
                               **_measure_cell(url, f"bench{cell}", templates[shape],
                                               n_clients, total, warmup, time_cap_s,
                                               shared_run, interval_s,
                                               server_pid=selector.pid,
                                               redis_pid=redis_pids[store])}
                        row["select_share_of_step"] = (
                            None if step_time_s is None
                            else row["p50_ms"] / 1e3 / step_time_s)
                        row["embedded_cpu_ms"] = embedded[shape][0] if selects else math.nan
                        row["cpu_ratio"] = row["server_cpu_ms"] / row["embedded_cpu_ms"]
                        shape_rows.append(row)
                        if progress is not None:
                            progress(row)
            if selects:  # again after the cells: the reference is the mean of both
                embedded[shape].append(embedded_cpu_ms(shape, selects, selector_env, server_cpus))
                reference = float(np.mean(embedded[shape]))
                if floor:
                    floor.append(grpc_floor_cpu_ms(shape, calls, selector_env, server_cpus))
                for row in shape_rows:
                    row["embedded_cpu_ms"] = reference
                    row["embedded_cpu_ms_runs"] = embedded[shape]
                    row["cpu_ratio"] = row["server_cpu_ms"] / reference
                    if floor and row["transport"] == "grpc":
                        row["grpc_floor_cpu_ms"] = float(np.mean(floor))
                        row["grpc_floor_cpu_ms_runs"] = floor
                        row["floor_ratio"] = (reference + row["grpc_floor_cpu_ms"]) / reference
            rows += shape_rows
    if cpus is not None:
        pin(os.getpid(), own_cpus)
    return {
        "benchmark": "selector",
        "settings": {"transports": list(transports), "stores": list(stores),
                     "clients": list(clients), "shapes": {s: SHAPES[s].label() for s in shapes},
                     "requests": requests if requests is not None else
                     {s: DEFAULT_REQUESTS[s] for s in shapes},
                     "warmup": warmup, "time_cap_s": time_cap_s, "step_time_s": step_time_s,
                     "shared_run": shared_run, "interval_s": interval_s,
                     "selector_env": dict(selector_env or {}), "workers": workers,
                     "embedded_selects": embedded_selects,
                     "server_cpus": None if server_cpus is None else sorted(server_cpus)},
        "targets": TARGETS,
        "rows": rows,
    }


# Runs in a process of its own, with the selector's environment: only APIs that every version
# of the code has, so that PYTHONPATH may point at another checkout (old code side by side).
_EMBEDDED_CPU = """
import json, sys, time
from pcm_contract.models import SelectRequest
from trainer_client import connect
from pcm_bench.core import Shape, synthetic_request
from pcm_bench.options import as_paths, at_least, json_option, one_of, positive, split
shape, selects, warmup = Shape(*map(int, sys.argv[1].split(","))), int(sys.argv[2]), 5
template = SelectRequest.model_validate(synthetic_request(shape))
client = connect("embedded")
client.put_run("embedded", feature_dim=shape.feature_dim)
for i in range(warmup):
    client.select("embedded", template.model_copy(update={"request_id": f"w{i}"}))
start = time.process_time()
for i in range(selects):
    client.select("embedded", template.model_copy(update={"request_id": f"r{i}"}))
print(json.dumps({"cpu_ms": (time.process_time() - start) / selects * 1e3}))
"""


def embedded_cpu_ms(shape: str, selects: int,
                    selector_env: Mapping[str, str] | None = None,
                    cpus: set[int] | None = None) -> float:
    """CPU time (all threads of its process) per embedded select of the shape's batch, in a
    process of its own with the selector processes' environment (BLAS pinned to one thread,
    as `pcm-selector` pins it, unless `selector_env` says otherwise)."""
    s = SHAPES[shape]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", **(selector_env or {})}
    out = subprocess.run(
        [sys.executable, "-c", _EMBEDDED_CPU,
         f"{s.trajectories},{s.chunks},{s.feature_dim}", str(selects)],
        env=env, capture_output=True, text=True, timeout=900, check=True,
        preexec_fn=_on_cpus(cpus))
    return float(json.loads(out.stdout.strip().splitlines()[-1])["cpu_ms"])


def _on_cpus(cpus: set[int] | None) -> Callable[[], None] | None:
    """A subprocess `preexec_fn` that puts the child on `cpus` (None: leave it)."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def pin(pid: int, cpus: set[int]) -> None:
    """Put every thread of process `pid` and of its descendants on `cpus` (threads and
    processes they start later inherit it)."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            os.sched_setaffinity(int(task.name), cpus)
    for child in child_pids(pid):
        pin(child, cpus)


# The transport's floor: a bare grpc.aio server in a process of its own (the selector's
# environment and glibc allocator settings) that answers every call with a serialized answer of
# the shape's batch, bytes in and bytes out; /floor.Floor/Cpu answers its process's CPU time so
# far. It prints its port, then serves until it is terminated.
_GRPC_FLOOR_SERVER = """
import asyncio, sys, time
import grpc
from pcm_contract import codec
from pcm_contract.models import SelectRequest
from trainer_client import connect
from pcm_bench.core import Shape, synthetic_request
from pcm_bench.options import as_paths, at_least, json_option, one_of, positive, split
try:
    from selector_service.allocator import keep_large_buffers
    keep_large_buffers()
except ImportError:  # a checkout from before the allocator settings
    pass
shape = Shape(*map(int, sys.argv[1].split(",")))
template = SelectRequest.model_validate(synthetic_request(shape))
client = connect("embedded")
client.put_run("floor", feature_dim=shape.feature_dim)
response = codec.select_response_to_proto(client.select("floor", template)).SerializeToString()

async def serve():
    async def answer(raw, context):
        return response
    async def cpu(raw, context):
        return repr(time.process_time()).encode()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 1 << 30)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("floor.Floor", {
        "Call": grpc.unary_unary_rpc_method_handler(answer),
        "Cpu": grpc.unary_unary_rpc_method_handler(cpu)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()

asyncio.run(serve())
"""


def grpc_floor_cpu_ms(shape: str, calls: int,
                      selector_env: Mapping[str, str] | None = None,
                      cpus: set[int] | None = None, warmup: int = 20) -> float:
    """Server CPU per call (its own process time) of a bare grpc.aio server that receives the
    shape's serialized Select request and sends a serialized answer of the same batch (the module's
    docstring), called `calls` times in a row by one client."""
    import grpc

    from pcm_contract import codec

    s = SHAPES[shape]
    request = codec.select_request_to_proto(
        "floor", SelectRequest.model_validate(synthetic_request(s))).SerializeToString()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", **(selector_env or {})}
    with subprocess.Popen(
            [sys.executable, "-c", _GRPC_FLOOR_SERVER,
             f"{s.trajectories},{s.chunks},{s.feature_dim}"],
            env=env, stdout=subprocess.PIPE, text=True, preexec_fn=_on_cpus(cpus)) as server:
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            limit = 2 * len(request)
            with grpc.insecure_channel(f"127.0.0.1:{port}",
                                       options=[("grpc.max_send_message_length", limit)]
                                       ) as channel:
                call = channel.unary_unary("/floor.Floor/Call")
                cpu = channel.unary_unary("/floor.Floor/Cpu")
                for _ in range(warmup):
                    call(request, timeout=60)
                start = float(cpu(b"", timeout=60))
                for _ in range(calls):
                    call(request, timeout=60)
                return (float(cpu(b"", timeout=60)) - start) / calls * 1e3
        finally:
            server.terminate()


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process `pid` and its children now (Linux /proc; NaN where
    unreadable). Children's time is read from each live child, not `cutime`, which counts
    only children that have exited."""
    if pid is None:
        return math.nan
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in [pid, *child_pids(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return math.nan
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _measure_cell(url: str, prefix: str, template: SelectRequest, n_clients: int, total: int,
                  warmup: int, time_cap_s: float, shared_run: bool,
                  interval_s: float, *, server_pid: int | None = None,
                  redis_pid: int | None = None) -> dict[str, Any]:
    from trainer_client import connect

    per_client = max(1, math.ceil(total / n_clients))
    run_ids = [prefix] if shared_run else [f"{prefix}-{k}" for k in range(n_clients)]
    feature_dim = template.trajectories[0].action_features.shape[1]
    with closing(connect(url)) as admin:
        for run_id in run_ids:
            admin.put_run(run_id, feature_dim=feature_dim)

    latencies: list[list[float]] = [[] for _ in range(n_clients)]
    errors = [0] * n_clients
    ready = threading.Barrier(n_clients + 1, timeout=600)
    capped = threading.Event()

    def trainer(k: int) -> None:
        run_id = run_ids[0] if shared_run else run_ids[k]
        with closing(connect(url, timeout_s=max(30.0, time_cap_s))) as client:
            try:
                for w in range(warmup):
                    client.select(run_id,
                                  template.model_copy(update={"request_id": f"w{k}-{w}"}))
            except Exception:
                errors[k] += 1
            finally:
                ready.wait()
            begin = time.perf_counter()
            deadline = begin + time_cap_s
            offset = random.Random(k).uniform(0, interval_s)
            for r in range(per_client):
                if interval_s > 0:
                    time.sleep(max(0.0, begin + offset + r * interval_s - time.perf_counter()))
                if time.perf_counter() > deadline:
                    capped.set()
                    break
                request = template.model_copy(update={"request_id": f"c{k}-r{r}"})
                t0 = time.perf_counter()
                try:
                    client.select(run_id, request)
                except Exception:
                    errors[k] += 1
                    continue
                latencies[k].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=trainer, args=(k,), daemon=True)
               for k in range(n_clients)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    cpu_start = (cpu_seconds(server_pid), cpu_seconds(redis_pid))
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    cpu_used = [cpu_seconds(pid) - begin
                for pid, begin in zip((server_pid, redis_pid), cpu_start, strict=True)]

    with closing(connect(url)) as admin:
        for run_id in run_ids:
            admin.delete_run(run_id)
    samples = np.asarray([x for per in latencies for x in per]) * 1e3
    done = int(samples.size)
    return {
        "p50_ms": float(np.percentile(samples, 50)) if done else math.nan,
        "p99_ms": float(np.percentile(samples, 99)) if done else math.nan,
        "mean_ms": float(samples.mean()) if done else math.nan,
        "rps": done / wall if wall > 0 else math.nan,
        "requests": done,
        "errors": int(sum(errors)),
        "capped": capped.is_set(),
        "server_cpu_ms": cpu_used[0] / done * 1e3 if done else math.nan,
        "redis_cpu_ms": cpu_used[1] / done * 1e3 if done else math.nan,
    }


def format_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Table cells for printing: the row fields, then requests/errors."""
    out = []
    for r in rows:
        out.append([r["transport"], r["store"], str(r["clients"]), f"{r['shape']} ({r['dims']})",
                    f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['rps']:.1f}",
                    f"{r.get('server_cpu_ms', math.nan):.2f}",
                    f"{r.get('redis_cpu_ms', math.nan):.2f}",
                    f"{r.get('embedded_cpu_ms', math.nan):.2f}",
                    f"{r.get('cpu_ratio', math.nan):.2f}x",
                    f"{r.get('floor_ratio', math.nan):.2f}x",
                    f"{r['requests']}{' capped' if r['capped'] else ''}",
                    str(r["errors"])])
    return out


TABLE_COLUMNS = ("transport", "store", "clients", "shape", "p50 ms", "p99 ms", "rps",
                 "server CPU ms/select", "redis CPU ms/select", "embedded CPU ms/select",
                 "server / embedded CPU", "bare gRPC floor", "requests", "errors")
