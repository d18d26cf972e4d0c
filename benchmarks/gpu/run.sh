#!/usr/bin/env bash
# The prepared GPU check of issue 14: one H200 (16 cores), at most 8 minutes, JSON results in OUT_DIR.
#   benchmarks/gpu/run.sh [OUT_DIR]                  # on the GPU machine (default: $OUT, else benchmarks/gpu/results)
#   benchmarks/gpu/run.sh --check [OUT_DIR]          # here, on the CPU: tiny shapes, the simulation's plan only
#   PY=IMAGE_PYTHON benchmarks/gpu/run.sh --bundle-check [OUT_DIR]
#                                                    # the GPU machine's path on the CPU: a venv over IMAGE_PYTHON's
#                                                    # packages + the bundle, tiny shapes, a one-round simulation run
# (a) client cost of the sub-FM vs the FM, fp32 and bf16, for BERT-base, MPNet-base, SmolLM2-135M and a
#     ~1 B LLaMA shape (benchmarks/gpu/client_cost_gpu.py): client_cost.jsonl, client_cost_summary.json;
# (b) a FedPFT MPI simulation with using_gpu: true, server + 3 clients on the one GPU, 2 rounds, MiniLM-L6's
#     shape with random weights, through `fedpft run`: sim/ (metrics.json, config.yaml, logs).
# FedML and what it imports come from benchmarks/gpu/bundle (benchmarks/gpu/make_bundle.sh; carry it), installed
# with pip --no-index into a venv that sees the machine's own torch, transformers and peft; the few modules FedML
# imports but FedPFT never calls are stand-ins there when the machine lacks them (fedpft_gpu_standins.py, listed
# in run.json). run.json records each step's exit code and milliseconds; a failed step does not stop the next
# (the script then exits 1).
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
MODE=gpu
case "${1:-}" in --check) MODE=check; shift;; --bundle-check) MODE=bundle; shift;; esac
OUT_DIR=$(realpath -m "${1:-${OUT:-benchmarks/gpu/results}}")
BUNDLE=${BUNDLE:-$REPO/benchmarks/gpu/bundle}
mkdir -p "$OUT_DIR"
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export HOME=${HOME:-/root} OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [ "$MODE" = check ]; then
  PY=${PY:-.venv/bin/python}   # the project's venv (scripts/setup_env.sh), or PY=... for another
  [ -x "$PY" ] || { echo "run.sh --check: $PY not found: run scripts/setup_env.sh first or set PY" >&2; exit 2; }
else
  PY=${PY:-python3}
fi
steps=()
FAILED=0
STANDINS=""
step() {   # step NAME LIMIT_S COMMAND...: run, time, record
  local name=$1 limit=$2; shift 2
  local start=$(date +%s%N)
  echo "== $name" >&2
  timeout "$limit" "$@"
  local rc=$?
  [ $rc = 0 ] || FAILED=1
  steps+=("{\"step\": \"$name\", \"rc\": $rc, \"milliseconds\": $(( ($(date +%s%N) - start) / 1000000 ))}")
  return $rc
}
write_record() {
  local IFS=,
  printf '{"check": %s, "mode": "%s", "host": "%s", "standins": "%s", "steps": [%s]}\n' \
    "$([ $MODE = gpu ] && echo false || echo true)" "$MODE" "$(hostname)" "$STANDINS" "${steps[*]}" > "$OUT_DIR/run.json"
}
trap write_record EXIT

WORK=$(mktemp -d)
TOKENIZER=$BUNDLE/tokenizer
if [ "$MODE" = check ]; then
  SIM_PY=$PY
else
  # a venv over the machine's own packages (torch, transformers, peft: every site directory on PY's sys.path,
  # so a system, user, conda or venv install alike), the bundle and the stand-ins installed into it
  step venv 120 "$PY" -m venv "$WORK/venv"
  SIM_PY=$WORK/venv/bin/python
  SITE=$("$SIM_PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  "$PY" -c "import sys; print('\n'.join(p for p in sys.path if p.endswith(('site-packages', 'dist-packages'))))" \
    > "$SITE/_machine_packages.pth"
  step install 180 "$SIM_PY" -m pip install -q --no-index --no-deps --find-links "$BUNDLE/wheels" -r "$BUNDLE/requirements.txt"
  cp benchmarks/gpu/fedpft_gpu_standins.py "$SITE/" && echo "import fedpft_gpu_standins" > "$SITE/zz_fedpft_gpu_standins.pth"
  STANDINS=$("$SIM_PY" -m fedpft_gpu_standins 2>&1 | tail -1)
  echo "run.sh: stand-ins for modules this machine lacks: $STANDINS" >&2
fi

# ---- (a) client cost
if [ "$MODE" = gpu ]; then
  step client_cost 300 "$SIM_PY" benchmarks/gpu/client_cost_gpu.py --out "$OUT_DIR"
else
  step client_cost 600 "$SIM_PY" benchmarks/gpu/client_cost_gpu.py --check --out "$OUT_DIR"
fi

# ---- (b) FedPFT MPI simulation on the GPU
if [ "$MODE" = gpu ]; then
  step model 300 "$SIM_PY" benchmarks/gpu/make_model.py "$WORK/model" --tokenizer "$TOKENIZER" >/dev/null
  DEVICE=(using_gpu=true gpu_mapping_file="$WORK/gpu_mapping.yaml" gpu_mapping_key=mapping_one_gpu fedpft_precision=bf16)
else
  [ -d "$TOKENIZER" ] || TOKENIZER=$("$SIM_PY" -c "from fedpft_algo.models import resolve_model_dir as r; print(r('minilm-l6', verify=False))")
  step model 300 "$SIM_PY" benchmarks/gpu/make_model.py "$WORK/model" --tokenizer "$TOKENIZER" --tiny >/dev/null
  DEVICE=(using_gpu=false)
fi
# the task as the package splits it, from the bundle (no scikit-learn on the GPU machine); in --check mode
# without a bundle, the built-in task itself
DATASET=$BUNDLE/data/rotten_tomatoes
[ "$MODE" != check ] || [ -d "$DATASET" ] || DATASET=rotten_tomatoes
# FedML's process -> GPU map: this host, one GPU, every process (server + 3 clients) on it
printf 'mapping_one_gpu:\n  %s: [4]\n' "$(hostname)" > "$WORK/gpu_mapping.yaml"
SIM=(run --cf fedml_config/simulation_mpi.yaml --out "$OUT_DIR/sim" --timeout 270 --round-timeout 240
     --set model="$WORK/model" dataset="$DATASET" comm_round=2 client_num_in_total=3 client_num_per_round=3 max_train_examples=600
     max_test_examples=200 fedpft_public_size=300 fedpft_layer_align_steps=50 fedpft_neuron_align_steps=10
     fedpft_align_interval=1 data_cache_dir="$WORK/cache" "${DEVICE[@]}")
rm -rf "$OUT_DIR/sim"
if [ "$MODE" = check ]; then
  step simulation_plan 300 "$SIM_PY" -m fedpft_algo.cli "${SIM[@]}" --check
elif [ "$MODE" = bundle ]; then   # the same run on the CPU, cut to one round on a few examples
  step simulation 300 "$SIM_PY" -m fedpft_algo.cli "${SIM[@]}" comm_round=1 max_train_examples=48 max_test_examples=24 \
    fedpft_public_size=40 fedpft_layer_align_steps=2 fedpft_neuron_align_steps=2
else
  step simulation 300 "$SIM_PY" -m fedpft_algo.cli "${SIM[@]}"
fi
rm -rf "$WORK"
exit $FAILED
