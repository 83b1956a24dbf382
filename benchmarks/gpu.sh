#!/usr/bin/env bash
# The GPU figures of the README in one run of a few minutes: the train step and the whole DDIM
# sampler at the published sizes, bfloat16 on (and float32 beside it), on the first accelerator.
#
#   bash benchmarks/gpu.sh [OUT_DIR]    # needs polyseg's requirements and a CUDA jax
#
# Writes OUT_DIR/gpu.jsonl (benchmarks/gpu.py's JSON lines) and OUT_DIR/nvidia-smi.txt; stops
# starting new items after BUDGET_S seconds (default 300) so that it ends in under 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-runs/gpu}}
mkdir -p "$out"
rm -f "$out/gpu.jsonl"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu \
  --format=csv >"$out/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" >"$out/nvidia-smi.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c 'import jax; print("jax", jax.__version__, jax.devices())'
python3 benchmarks/gpu.py --budget_s="${BUDGET_S:-300}" --out="$out/gpu.jsonl"
