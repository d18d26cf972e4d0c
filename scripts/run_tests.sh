#!/usr/bin/env bash
# Set up the environment (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# FedML writes under ~/.fedml and ./tmp/fedml: keep the tests away from the real home.
export HOME="${FEDPFT_TEST_HOME:-$(mktemp -d)}"
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
