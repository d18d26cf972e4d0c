"""The examples run as written (``examples/README.md``); the yaml example's commands are in test_docs."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.process
def test_python_api_example_runs_the_algorithm_core_end_to_end():
    done = subprocess.run([sys.executable, str(REPO / "examples" / "python_api.py")], cwd=REPO, capture_output=True,
                          text=True, timeout=580)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "layer-level alignment: loss" in done.stdout and "plugged-in FM" in done.stdout, done.stdout
