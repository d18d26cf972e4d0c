"""The GPU machine's own path through ``benchmarks/gpu/run.sh``, on the CPU (``--bundle-check``).

The GPU machine has torch, transformers and peft and nothing else of this project: no FedML, no network,
at most 64 MiB carried per call. This builds such a machine's Python here (a clean venv holding only torch,
transformers and peft at this venv's versions, with the NumPy 2 that pip resolves for them), writes the bundle
with ``make_bundle.sh`` (PyPI, as the README's set-up does), and runs the script's bundle mode against it: a venv
over that Python's packages, the bundle installed offline, the stand-ins for what FedML imports but FedPFT
never calls, the client-cost probe at tiny scale, and a one-round FedPFT MPI simulation through the bundle's
own ``mpirun``. What this cannot show (a GPU's numbers) waits for a GPU machine."""
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GPU = REPO / "benchmarks" / "gpu"

pytestmark = [pytest.mark.process, pytest.mark.timeout(2400)]


def _run(command, env, timeout):
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert done.returncode == 0, f"{command[:3]}: {done.stderr[-3000:]}"
    return done


def test_the_bundle_runs_fedpft_on_a_python_that_holds_only_torch_transformers_and_peft(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path / "home"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)
    image = tmp_path / "image"
    _run([sys.executable, "-m", "venv", str(image)], env, 300)
    pins = [f"torch=={importlib.metadata.version('torch').split('+')[0]}",
            *(f"{name}=={importlib.metadata.version(name)}" for name in ("transformers", "peft"))]
    _run([str(image / "bin" / "python"), "-m", "pip", "install", "-q", *pins], env, 1200)
    numpy_major = _run([str(image / "bin" / "python"), "-c", "import numpy; print(numpy.__version__)"],
                       env, 60).stdout.split(".")[0]
    assert int(numpy_major) >= 2   # the case FedML's wandb pin breaks on, which compat.py mends
    for absent in ("fedml", "scipy", "sklearn", "mpi4py"):
        assert subprocess.run([str(image / "bin" / "python"), "-c", f"import {absent}"], env=env,
                              capture_output=True).returncode != 0, f"{absent} is in the image"

    bundle = tmp_path / "bundle"
    made = _run([str(GPU / "make_bundle.sh"), str(bundle)], dict(env, PY=sys.executable), 900)
    size_mb = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 2**20
    assert size_mb <= 56, made.stdout   # + the working tree: under the 64 MiB that travel per call

    out = tmp_path / "out"
    done = subprocess.run([str(GPU / "run.sh"), "--bundle-check", str(out)],
                          env=dict(env, PY=str(image / "bin" / "python"), BUNDLE=str(bundle)),
                          capture_output=True, text=True, timeout=1500)
    record = json.loads((out / "run.json").read_text())
    assert done.returncode == 0, done.stderr[-4000:]
    assert record["mode"] == "bundle" and [(s["step"], s["rc"]) for s in record["steps"]] == [
        ("venv", 0), ("install", 0), ("client_cost", 0), ("model", 0), ("simulation", 0)]
    assert set(record["standins"].split()) == {"scipy", "boto3", "botocore", "h5py", "PIL"}
    rows = json.loads((out / "sim" / "metrics.json").read_text())
    assert len(rows) == 1 and 0.0 <= rows[0]["accuracy"] <= 1.0 and rows[0]["client_devices"] == "cpu cpu cpu"
    assert "matplotlib is not installed" in done.stderr and not (out / "sim" / "accuracy.png").exists()
