"""Where a small select's server time goes: a real `pcm-selector serve` (gRPC + Redis, one
worker), one client selecting in sequence, and the server's CPU time per select (/proc); with
py-spy installed (`pip install py-spy`), also a sampled profile of the server while it runs,
summarised as each frame's share of the samples (docs/BENCHMARKS.md, "selector").

    python scripts/profile_selector.py                      # 300 selects of 64 x 32 x 56
    python scripts/profile_selector.py --selects 1000 --shape 512,64,56 --top 40
    python scripts/profile_selector.py --no-py-spy          # the CPU figure only

py-spy samples wall-clock time of the threads that are not idle, so a frame's share includes
time spent in its system calls (socket writes to Redis, waking the event loop).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pcm_bench.core import Shape, synthetic_request  # noqa: E402
from pcm_bench.selector import cpu_seconds  # noqa: E402
from pcm_bench.servers import RedisServer, SelectorProcess  # noqa: E402
from pcm_contract.models import SelectRequest  # noqa: E402
from trainer_client import connect  # noqa: E402


def summarise(raw: Path, top: int) -> list[str]:
    """py-spy's raw (folded) stacks -> lines `SHARE inclusive frame`, largest first."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = {frame.split(" (")[0] for frame in stack.split(";")[1:]}
        for frame in frames:
            inclusive[frame] += n
    lines = [f"{total} samples"]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(top)]
    return lines


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{item!r} is not KEY=VALUE")
    return key, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--selects", type=int, default=300, help="timed selects")
    parser.add_argument("--shape", default="64,32,56", help="trajectories,chunks,feature_dim")
    parser.add_argument("--top", type=int, default=30, help="frames to print")
    parser.add_argument("--no-py-spy", dest="py_spy", action="store_false")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", type=_key_value,
                        help="set in the selector's environment (repeatable)")
    args = parser.parse_args()
    n, c, d = (int(x) for x in args.shape.split(","))
    template = SelectRequest.model_validate(synthetic_request(Shape(n, c, d)))
    py_spy = shutil.which("py-spy") if args.py_spy else None
    extra_env = dict(args.env)
    # the selector runs this checkout's code, whatever else is installed
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as redis, \
            SelectorProcess(store="redis", redis_url=redis.url,
                            env={"PYTHONPATH": path, **extra_env}) as selector, \
            closing(connect(selector.grpc_url)) as client:
        client.put_run("profile", feature_dim=d)
        for i in range(20):
            client.select("profile", template.model_copy(update={"request_id": f"warm-{i}"}))
        spy = None
        raw = Path(tmp) / "profile.txt"
        if py_spy is not None:
            spy = subprocess.Popen([py_spy, "record", "--pid", str(selector.pid), "--rate", "500",
                                    "--format", "raw", "--nonblocking", "--threads", "-o",
                                    str(raw)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            time.sleep(1.5)  # py-spy attaches
        cpu0, redis0, t0 = cpu_seconds(selector.pid), cpu_seconds(redis.pid), time.perf_counter()
        for i in range(args.selects):
            client.select("profile", template.model_copy(update={"request_id": f"r{i}"}))
        wall = time.perf_counter() - t0
        cpu = (cpu_seconds(selector.pid) - cpu0) / args.selects
        redis_cpu = (cpu_seconds(redis.pid) - redis0) / args.selects
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        print(f"{args.selects} selects of {n} x {c} x {d} over gRPC + Redis, one client: "
              f"server CPU {cpu * 1e3:.2f} ms/select, redis-server CPU "
              f"{redis_cpu * 1e3:.2f} ms/select, {wall / args.selects * 1e3:.2f} ms each")
        if spy is not None and raw.exists():
            print("\n".join(summarise(raw, args.top)))
        elif args.py_spy:
            print("(py-spy not found: pip install py-spy for the profile)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
