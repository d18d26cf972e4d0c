#!/usr/bin/env bash
# The sub-FM options of issue 15 against the paper's rules at the same FLOP ratio: `fedpft compress` (build the
# sub-FM, layer-level alignment, the held-out public batches' losses before and after) per variant and seed.
#   benchmarks/sub-fm-variants/run.sh            # MiniLM-L6 (80 steps, 1,000 public sentences), then
#                                                # MPNet-base (20 steps, 400 public sentences); resumable
#   python benchmarks/sub-fm-variants/table.py   # the tables of BENCHMARKS.md from the reports
# Budgets are small because the machine was shared (load 9-15 on 2 cores while measured); keep 0.25, layers 0
# and L-1 whole; one torch thread.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1
run() {  # model steps public seed name [--set values]
  local model=$1 steps=$2 public=$3 seed=$4 name=$5; shift 5
  local out=benchmarks/sub-fm-variants/$model/$name-s$seed
  [ -f "$out/compress_report.json" ] && return
  timeout 3000 "$PY" -m fedpft_algo.cli compress --model "$model" --seed "$seed" --set fedpft_layer_align_steps="$steps" \
    fedpft_public_size="$public" fedpft_max_length=64 "$@" --out "$out" > /dev/null
}
for spec in "minilm-l6 80 1000" "mpnet-base 20 400"; do
  set -- $spec
  for seed in 0 1; do
    run $1 $2 $3 $seed weight
    run $1 $2 $3 $seed activation fedpft_saliency=activation
    run $1 $2 $3 $seed sensitivity fedpft_layer_keep=sensitivity
    run $1 $2 $3 $seed output fedpft_align_output_weight=1.0
  done
done
