#!/usr/bin/env bash
# GPU check: on a machine with a CUDA GPU, from a checkout of this repo,
#
#   bash scripts/gpu-check.sh                 # JSON and a log into ${OUT:-runs/gpu-check}
#
# 1. pcm-bench grad on CUDA, keep 0.1 / 0.2 / 0.5, fp32 then bf16 (GRPO vs PCM update time,
#    saved-tensor bytes and the CUDA allocator's peak per side): grad-fp32.json, grad-bf16.json;
# 2. the CUDA tests (tests/trainer_client/train/test_cuda.py) and the device tests;
# 3. a few PCM-GRPO steps on CUDA in bf16 from a quick SFT checkpoint: rl-summary.json;
# 4. while time is left, pcm-bench grad with camera images (LIBERO-like rows), fp32 and bf16.
# Then gpu-check.json: each stage's status and time, the GPU, and the ratios of every grad run.
#
# Every stage runs under its own time limit, cut to what is left of BUDGET_S (default 450 s,
# so the whole fits in 8 minutes on one H100). A failed stage is logged and the next one still
# runs; the exit status is 1 when a required stage failed. Needs python (PYTHON, default
# python3) with a CUDA build of torch; installs the package with `pip install -e '.[trainer]'`
# when it is not importable. Scratch files (checkpoints) go to a temporary dir, not to OUT.
# A rehearsal without a GPU: DEVICE=cpu GRAD_ARGS="--trajectories 4 --chunks 8" BUDGET_S=150.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-runs/gpu-check}"
BUDGET_S="${BUDGET_S:-450}"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
read -r -a GRAD_EXTRA <<<"${GRAD_ARGS:-}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
LOG="$OUT/gpu-check.log"
STAGES="$WORK/stages.tsv"
START=$(date +%s)
FAILED=0
: >"$LOG"
: >"$STAGES"
export PYTHONUNBUFFERED=1
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

say() { echo "[gpu-check +$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# run_stage REQUIRED NAME LIMIT_S CMD...: CMD under `timeout` (its limit cut to the budget
# left), output to the terminal and the log; the status goes to $STAGES. An optional stage is
# skipped when less than its full limit is left; a required one runs on what is left.
run_stage() {
  local required=$1 name=$2 limit=$3
  shift 3
  local budget
  budget=$(left)
  if ((budget < 15)) || { [ "$required" = 0 ] && ((budget < limit)); }; then
    say "skip $name: ${budget}s of the budget left"
    printf '%s\tskipped\t0\n' "$name" >>"$STAGES"
    if [ "$required" = 1 ]; then FAILED=1; fi
    return 0
  fi
  if ((limit > budget)); then limit=$budget; fi
  say "run  $name (limit ${limit}s): $*"
  local t0 rc
  t0=$(date +%s)
  set +e
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  set -e
  local status=ok
  if ((rc == 124 || rc == 137)); then
    status=timeout
  elif ((rc != 0)); then
    status="failed(rc=$rc)"
  fi
  say "done $name: $status in $(($(date +%s) - t0))s"
  printf '%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" >>"$STAGES"
  if [ "$status" != ok ] && [ "$required" = 1 ]; then FAILED=1; fi
  return 0
}

# ---- 0. preflight: CUDA, the package ------------------------------------------------------------
say "repo $(pwd) | OUT $OUT | scratch $WORK | budget ${BUDGET_S}s"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
fi
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"
then
  say "error: $PY's torch sees no CUDA GPU (install the CUDA build of torch); stopping"
  exit 1
fi
if ! "$PY" -c "import trainer_client.cli, pcm_bench.cli" >/dev/null 2>&1; then
  say "the package is not importable: pip install -e '.[trainer]'"
  if ! timeout 120 "$PY" -m pip install -q -e '.[trainer]' 2>&1 | tee -a "$LOG"; then
    say "error: pip install -e '.[trainer]' failed (offline? install the dependencies first); stopping"
    exit 1
  fi
fi
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {gpu}; bf16 on it: {bf16}")
EOF

# ---- 1. update time and memory on CUDA, fp32 and bf16 -------------------------------------------
for precision in fp32 bf16; do
  run_stage 1 "grad-$precision" 100 "$PY" -m pcm_bench.cli grad --device "$DEVICE" \
    --precision "$precision" --keep-fractions 0.1,0.2,0.5 --repeats 5 "${GRAD_EXTRA[@]}" \
    --json "$OUT/grad-$precision.json"
done

# ---- 2. the CUDA tests -------------------------------------------------------------------------
if "$PY" -c "import pytest" >/dev/null 2>&1; then
  run_stage 1 tests 150 "$PY" -m pytest -q -x -p no:cacheprovider -rs \
    tests/trainer_client/train/test_cuda.py tests/trainer_client/train/test_device.py
else
  say "skip tests: pytest is not installed ($PY -m pip install pytest pytest-timeout)"
  printf 'tests\tno-pytest\t0\n' >>"$STAGES"
  FAILED=1
fi

# ---- 3. a few PCM-GRPO steps on CUDA, bf16, from a quick SFT checkpoint --------------------------
run_stage 1 sft 60 "$PY" -m trainer_client.cli sft --device "$DEVICE" --out "$WORK/sft" \
  --episodes 40 --iters 300 --preset small --width 128 --depth 2 --lr 1e-3 \
  --init-log-std -0.7 --eval-episodes 0 --num-workers 4 --no-progress
if [ -f "$WORK/sft/sft.pt" ]; then
  run_stage 1 rl 120 "$PY" -m trainer_client.cli rl --device "$DEVICE" --precision bf16 \
    --init "$WORK/sft/sft.pt" --out "$WORK/rl" --run-id gpu-check --trainer-id gpu-check \
    --steps 4 --init-states 4 --group-size 8 --num-workers 8 \
    --checkpoint-every 4 --time-budget-s 90 --no-progress
  if [ -f "$WORK/rl/summary.json" ]; then cp "$WORK/rl/summary.json" "$OUT/rl-summary.json"; fi
else
  say "skip rl: no SFT checkpoint"
  printf 'rl\tskipped\t0\n' >>"$STAGES"
  FAILED=1
fi

# ---- 4. optional: LIBERO-like rows (two 128x128 cameras) ----------------------------------------
for precision in fp32 bf16; do
  run_stage 0 "grad-images-$precision" 100 "$PY" -m pcm_bench.cli grad --images \
    --device "$DEVICE" --precision "$precision" --keep-fractions 0.1,0.2,0.5 --repeats 3 \
    "${GRAD_EXTRA[@]}" --json "$OUT/grad-images-$precision.json"
done

# ---- the summary --------------------------------------------------------------------------------
"$PY" - "$OUT" "$STAGES" "$(($(date +%s) - START))" <<'EOF' 2>&1 | tee -a "$LOG"
import json
import sys
from pathlib import Path

import torch

out, stages_file, wall = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
stages = {}
for line in stages_file.read_text().splitlines():
    name, status, seconds = line.split("\t")
    stages[name] = {"status": status, "seconds": int(seconds)}
grad = {}
for path in sorted(out.glob("grad-*.json")):
    r = json.loads(path.read_text())
    grad[path.stem] = {
        "device_name": r.get("device_name"),
        "precision": r.get("precision"),
        "model_params": r["model"]["params"],
        "rows": r["batch"]["rows"],
        **{
            key: [
                {k: x.get(k) for k in ("keep_fraction", "kept_rows", "update_time_ratio",
                                       "activation_memory_ratio", "cuda_peak_ratio",
                                       "cuda_peak_delta_ratio", "update_s", "micro_batch",
                                       "micro_batches", "grpo_micro_batches", "pack_cap")}
                | {"grpo_update_s": r[f"grpo_{key}"]["update_s"],
                   "grpo_cuda_peak_bytes": r[f"grpo_{key}"]["cuda_peak_bytes"],
                   "pcm_cuda_peak_bytes": x.get("cuda_peak_bytes")}
                for x in r[key]
            ]
            for key in ("results", "results_rows", "results_pack", "results_rows_pack")
            if key in r
        },
    }
summary = {
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "wall_s": wall,
    "stages": stages,
    "grad": grad,
}
rl = out / "rl-summary.json"
if rl.exists():
    s = json.loads(rl.read_text())
    summary["rl"] = {k: s.get(k) for k in ("steps", "wall_s", "time_split", "kept_fraction",
                                            "success_mean", "runtime")}
(out / "gpu-check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"wrote {out / 'gpu-check.json'}")
for name, g in grad.items():
    for key in ("results", "results_pack"):
        for x in g.get(key, []):
            peak = x["cuda_peak_ratio"]
            print(f"{name:>18} keep {x['keep_fraction']:.1f} {x.get('micro_batch') or '':>10}:"
                  f" speed-up {x['update_time_ratio']:.2f}x"
                  f" | saved tensors PCM/GRPO {x['activation_memory_ratio']:.3f}"
                  + (f" | CUDA peak PCM/GRPO {peak:.3f}" if peak is not None else ""))
for name, st in stages.items():
    print(f"stage {name}: {st['status']} ({st['seconds']}s)")
EOF

say "finished in $(($(date +%s) - START))s; $([ "$FAILED" = 0 ] && echo 'all stages ok' || echo 'SOME STAGES FAILED')"
exit "$FAILED"
