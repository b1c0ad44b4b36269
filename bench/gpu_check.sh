#!/usr/bin/env bash
# One prepared GPU check: the CUDA-marked tests, bench/speed.py on the GPU (plain float32 against bf16
# autocast and torch.compile), and PDD+MTT on MNIST at width 128 beside its own P = 1 and random
# curricula over 3 seeds. Writes OUT_DIR/gpu_check.md (the tables) and one log per step.
#
#   bash bench/gpu_check.sh [--tiny] [OUT_DIR]     # OUT_DIR defaults to bench/results/gpu_check
#
# --tiny runs every step at toy sizes on the offline digits set: CI runs it on CPU to keep the script
# working; its numbers are not figures. Each step has a time limit (seconds, from the environment:
# GPU_CHECK_SPEED_S, GPU_CHECK_QUALITY_S) and a failed or cut step is reported, never fatal, so one
# run on a lent GPU always brings back a results file. GPU_CHECK_STEPS picks steps (default
# tests,speed,quality): the CUDA tests take under a minute; speed was cut at 200 s on an H100; the first
# quality row (PDD+MTT P = 2 at IPC 10, 3 seeds at once, with its P = 1 and random comparisons) took
# about 11 minutes on an H200 over two calls, the second resuming from the first's engine cache on the
# still-warm machine (GPU_CHECK_CACHE=/tmp/...; its P = 1 row then came from that cache in 15 s), so a
# 15-minute device budget holds the tests and about that one row. MNIST comes from PDD_DATA_DIR (or
# is fetched: python -m pdd_engine fetch mnist); a device with no network needs the IDX files (.gz
# works) and diskcache's wheel carried beside the checkout.
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=0
if [ "${1:-}" = "--tiny" ]; then TINY=1; shift; fi
OUT=${1:-bench/results/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
REPORT="$OUT/gpu_check.md"
export PYTHONUNBUFFERED=1

STEPS=",${GPU_CHECK_STEPS:-tests,speed,quality},"

step() {  # step NAME LIMIT_S COMMAND...: run, log, and note the outcome in the report
  local name=$1 limit=$2; shift 2
  case $STEPS in *",$name,"*) ;; *) echo "- $name: not run (GPU_CHECK_STEPS)" >>"$REPORT"; return ;; esac
  rm -f "$OUT/$name".md "$OUT/$name".json
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local took=$((SECONDS - t0))
  case $rc in
    0) echo "- $name: ok in ${took} s" >>"$REPORT" ;;
    124) echo "- $name: cut at its ${limit} s limit (partial results below, if any)" >>"$REPORT" ;;
    *) echo "- $name: failed (exit $rc) in ${took} s: $(tail -n 1 "$OUT/$name.log")" >>"$REPORT" ;;
  esac
}

{
  echo "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ)$([ $TINY = 1 ] && echo ', --tiny: toy sizes, not figures'))"
  echo
  "$PY" -c 'import torch; print("torch", torch.__version__, "| device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only (no CUDA GPU)")'
  echo
} >"$REPORT"

step tests 300 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py

if [ $TINY = 1 ]; then
  step speed "${GPU_CHECK_SPEED_S:-300}" "$PY" -m bench.speed --tiny --only variants --out "$OUT/speed" --results "$OUT/speed.csv"
  step quality "${GPU_CHECK_QUALITY_S:-300}" "$PY" -m bench.quality --datasets digits --methods mtt --ipcs 2 \
    --stages 1,2 --protocols paper --seeds 0 --iterations 2 --eval-epochs 2 --eval-models 1 \
    --extra '{"num_experts": 1, "max_start_epoch": 1, "expert_epochs": 1}' --results "$OUT/quality.csv" \
    --cache-dir "$OUT/cache"
else
  step speed "${GPU_CHECK_SPEED_S:-300}" "$PY" -m bench.speed --only variants,unroll --out "$OUT/speed" --results "$OUT/speed.csv"
  # The MNIST rows of docs/benchmarks.md at the reference's scale: all 60k training images, width 128;
  # PDD+MTT and PDD+IDC at P = 2, 1 and 5 over 3 seeds, the 3 seeds at once on the one GPU. P = 2 comes
  # first: its run distils and evaluates P = 1 as its comparison, so the P = 1 row after it is read from
  # the cache (two rows at once would compute it twice). A cut step keeps its finished rows (appended as
  # they finish) and the same command resumes it; GPU_CHECK_CACHE puts the engine cache elsewhere (a
  # device call brings back only a few files from OUT_DIR).
  step quality "${GPU_CHECK_QUALITY_S:-540}" "$PY" -m bench.quality --datasets mnist --methods mtt,idc --ipcs 10,50 \
    --stages 2,1,5 --protocols paper --seeds 0,1,2 --jobs 1 --seed-jobs 3 --threads 2 --iterations 200 \
    --eval-epochs 300 --eval-models 3 --extra '{"width": 128}' --results "$OUT/quality.csv" \
    --cache-dir "${GPU_CHECK_CACHE:-$OUT/cache}"
fi
[ -f "$OUT/quality.csv" ] && "$PY" -m bench.report --csv "$OUT/quality.csv" >"$OUT/quality.md"

for part in speed quality; do
  if [ -f "$OUT/$part.md" ]; then { echo; echo "## $part"; echo; cat "$OUT/$part.md"; } >>"$REPORT"; fi
done
cat "$REPORT"
