#!/usr/bin/env bash
# A shared run's cost per select, old and new server code side by side on one machine:
#
#   bash scripts/bench-shared-run-old-new.sh OLD_CHECKOUT OUT_DIR [REPEATS] [CLIENTS]
#
# OLD_CHECKOUT: a checkout of the old code (e.g. `git worktree add /tmp/old COMMIT`). This
# checkout's `pcm-bench selector --shared-run` drives both: `--selector-env PYTHONPATH=...`
# makes the selector processes (and the embedded reference) import the old code. Each repeat
# runs new, then old: gRPC + Redis, one worker, the small batch, CLIENTS (default 1,8,32)
# concurrent clients on one run, one row per count, with the embedded select's CPU per select
# of the same batch measured in the same run. JSON per side and repeat in OUT_DIR.
# Run it on an otherwise idle machine (it starts its own Redis and selectors).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OLD="$(cd "$1" && pwd)"
mkdir -p "$2"
OUT="$(cd "$2" && pwd)"
REPEATS="${3:-2}"
CLIENTS="${4:-1,8,32}"
cd "$(mktemp -d)"  # not the checkout: `python -m` puts the working directory first on sys.path
export PYTHONPATH="$ROOT" OMP_WAIT_POLICY=PASSIVE
bench() {
  python -m pcm_bench.cli selector --transports grpc --stores redis --shapes small \
    --shared-run --clients "$CLIENTS" --requests 400 "$@"
}
for rep in $(seq "$REPEATS"); do
  bench --json "$OUT/shared-new-$rep.json"
  bench --selector-env "PYTHONPATH=$OLD" --json "$OUT/shared-old-$rep.json"
done
python - "$OUT" "$REPEATS" <<'PY'
import json, sys
out, repeats = sys.argv[1], int(sys.argv[2])
print("side rep clients server_cpu_ms embedded_cpu_ms ratio p50_ms rps requests errors")
for rep in range(1, repeats + 1):
    for side in ("new", "old"):
        for r in json.load(open(f"{out}/shared-{side}-{rep}.json"))["rows"]:
            print(side, rep, r["clients"], f"{r['server_cpu_ms']:.2f}", f"{r['embedded_cpu_ms']:.2f}",
                  f"{r['cpu_ratio']:.2f}", f"{r['p50_ms']:.1f}", f"{r['rps']:.0f}", r["requests"],
                  r["errors"])
PY
echo "figures in $OUT"
