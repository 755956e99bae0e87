#!/usr/bin/env bash
# The selector's figures (worker processes, inline selects), old and new server code side by
# side on one machine:
#
#   bash scripts/bench-selector-old-new.sh OLD_CHECKOUT OUT_DIR [REPEATS]
#
# OLD_CHECKOUT: a checkout of the old code (e.g. `git worktree add /tmp/old 8a19e78`). This
# checkout's `pcm-bench selector` drives both: `--selector-env PYTHONPATH=...` makes the selector
# processes import the old code, and PCM_GRPC_INLINE_SELECT_CHUNKS=0 / 4096 picks the new
# server's select path (worker thread / inline). Small cells run REPEATS times (default 2),
# alternating new / inline / old; then the full LIBERO step once each. JSON per cell in OUT_DIR.
# Run it from anywhere on an otherwise idle machine (it starts its own Redis and selectors).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OLD="$(cd "$1" && pwd)"
mkdir -p "$2"
OUT="$(cd "$2" && pwd)"
REPEATS="${3:-2}"
cd "$(mktemp -d)"  # not the checkout: `python -m` puts the working directory first on sys.path
export PYTHONPATH="$ROOT" OMP_WAIT_POLICY=PASSIVE
bench() { python -m pcm_bench.cli selector --transports grpc "$@"; }
NEW=(--selector-env PCM_GRPC_INLINE_SELECT_CHUNKS=0)
INLINE=(--selector-env PCM_GRPC_INLINE_SELECT_CHUNKS=4096)
OLDENV=(--selector-env "PYTHONPATH=$OLD")
for rep in $(seq "$REPEATS"); do
  for side in new inline old; do
    case $side in new) env=("${NEW[@]}") ;; inline) env=("${INLINE[@]}") ;; old) env=("${OLDENV[@]}") ;; esac
    bench --stores redis --clients 1 --shapes small "${env[@]}" --json "$OUT/cpu-$side-$rep.json"
  done
  for side in new inline old; do
    case $side in new) env=("${NEW[@]}" --workers 2) ;; inline) env=("${INLINE[@]}" --workers 2) ;;
      old) env=("${OLDENV[@]}") ;; esac  # the old server has no --workers: one process
    bench --stores redis --clients 16 --shapes small "${env[@]}" --json "$OUT/workers-$side-$rep.json"
  done
done
bench --stores memory,redis --clients 1 --shapes libero --json "$OUT/libero-new.json"
bench --stores memory,redis --clients 1 --shapes libero "${OLDENV[@]}" --json "$OUT/libero-old.json"
echo "figures in $OUT"
