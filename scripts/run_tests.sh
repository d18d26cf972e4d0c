#!/usr/bin/env bash
# Set up the environment (if needed) and run the test suite. Extra arguments go to pytest.
#   scripts/run_tests.sh [ARGS...]        everything (unit, integration and multi-process tests)
#   scripts/run_tests.sh fast [ARGS...]   without the tests marked `process` or `netns` (about 2 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
select=()
if [ "${1:-}" = "fast" ]; then
    shift
    select=(-m "not process and not netns")
fi
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# FedML writes under ~/.fedml and ./tmp/fedml: keep the tests away from the real home.
export HOME="${FEDPFT_TEST_HOME:-$(mktemp -d)}"
exec .venv/bin/python -m pytest -p no:cacheprovider ${select[@]+"${select[@]}"} "$@"
