#!/usr/bin/env bash
# Client cost of a FedPFT client (sub-FM + LoRA) against a FedPETuning client (full FM + LoRA), per batch
# size, with and without gradient checkpointing: where the epoch-time and memory ratios of BENCHMARKS.md
# come from. One `python -m fedpft_algo.bench.client_cost` probe process per point (one local epoch, the fastest
# of REPEATS), on a quiet machine; the glibc mmap threshold is fixed as `fedpft bench` fixes it.
#   benchmarks/client_cost_sweep.sh                    # MiniLM-L6, batch 8 16 32 64
#   MODEL=mpnet-base BATCHES="8 16" EXAMPLES=32 REPEATS=1 benchmarks/client_cost_sweep.sh
# Writes $OUT (default benchmarks/client-cost/<model>.jsonl: one JSON line per probe) and prints a table.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-minilm-l6}
BATCHES=${BATCHES:-"8 16 32 64"}
EXAMPLES=${EXAMPLES:-128}
TASK=${TASK:-rotten_tomatoes}
REPEATS=${REPEATS:-3}
CHECKPOINTING=${CHECKPOINTING:-"false true"}
OUT=${OUT:-benchmarks/client-cost/$(basename "$MODEL").jsonl}
PY=${PY:-.venv/bin/python}
mkdir -p "$(dirname "$OUT")"
tmp=$(mktemp "$OUT.XXXX")
trap 'rm -f "$tmp"' EXIT
for gc in $CHECKPOINTING; do
  for batch in $BATCHES; do
    for kind in sub_model full_lora; do
      HF_HUB_OFFLINE=1 timeout 1800 "$PY" -m fedpft_algo.bench.client_cost --model "$MODEL" \
        --kind "$kind" --task "$TASK" --examples "$EXAMPLES" --batch-size "$batch" --repeats "$REPEATS" \
        --config-json "{\"gradient_checkpointing\": $gc}" | tail -n 1 | \
        "$PY" -c "import json, sys; r = json.loads(sys.stdin.read()); r['gradient_checkpointing'] = $([ "$gc" = true ] && echo True || echo False); print(json.dumps(r))" >> "$tmp"
    done
  done
done
mv "$tmp" "$OUT"
trap - EXIT
"$PY" - "$OUT" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
by = {(r["gradient_checkpointing"], r["batch_size"], r["kind"]): r for r in rows}
print("| checkpointing | batch | epoch s sub / full | time ratio | FLOP ratio | model MB sub / full (peak - base) | memory ratio |")
print("|---|---|---|---|---|---|---|")
for gc, batch, kind in sorted(by):
    if kind != "sub_model" or (gc, batch, "full_lora") not in by:
        continue
    sub, full = by[(gc, batch, "sub_model")], by[(gc, batch, "full_lora")]
    ms, mf = sub["peak_rss_mb"] - sub["base_rss_mb"], full["peak_rss_mb"] - full["base_rss_mb"]
    print(f"| {'on' if gc else 'off'} | {batch} | {sub['epoch_seconds']:.2f} / {full['epoch_seconds']:.2f} "
          f"| {sub['epoch_seconds'] / full['epoch_seconds']:.3f} | {sub['flops_per_token'] / full['flops_per_token']:.3f} "
          f"| {ms:.0f} / {mf:.0f} | {ms / mf:.3f} |")
EOF
