"""The prepared GPU check (``benchmarks/gpu/run.sh``) in its CPU ``--check`` mode: every real shape built at a
tiny scale through the package's client builders, both client kinds, fp32 and bf16, the JSON it writes, and
the plan of its FedPFT MPI simulation, so that the script cannot rot where no GPU is at hand."""
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHAPES = ("bert-base", "mpnet-base", "smollm2-135m", "llama-1b")

pytestmark = [pytest.mark.process, pytest.mark.timeout(900)]


def test_gpu_script_check_mode_builds_every_shape_and_plans_the_simulation(tmp_path):
    out = tmp_path / "gpu"
    env = dict(os.environ, HOME=str(tmp_path / "home"), PY=os.environ.get("PY", __import__("sys").executable))
    done = subprocess.run([str(REPO / "benchmarks" / "gpu" / "run.sh"), "--check", str(out)], env=env,
                          capture_output=True, text=True, timeout=880)
    record = json.loads((out / "run.json").read_text())
    assert done.returncode == 0, done.stderr[-3000:]
    assert record["check"] is True
    assert [(s["step"], s["rc"]) for s in record["steps"]] == [("client_cost", 0), ("model", 0), ("simulation_plan", 0)]
    rows = [json.loads(line) for line in (out / "client_cost.jsonl").read_text().splitlines()]
    assert {(r["shape"], r["kind"], r["precision"]) for r in rows} == {
        (s, k, p) for s in SHAPES for k in ("sub_model", "full_lora") for p in ("fp32", "bf16")}
    for shape in SHAPES:
        sub, full = (next(r for r in rows if r["shape"] == shape and r["kind"] == k and r["precision"] == "fp32")
                     for k in ("sub_model", "full_lora"))
        # tiny scale (4 layers): layers 1 and 2 keep a quarter of their FFN, 0 and 3 stay whole
        assert sub["layers"] == full["layers"] == 4 and sub["tiny"] is True
        assert sub["total_parameters"] < full["total_parameters"] and sub["flops_per_token"] < full["flops_per_token"]
        assert sub["trainable_parameters"] == full["trainable_parameters"]   # the same LoRA + head
    summary = json.loads((out / "client_cost_summary.json").read_text())
    assert set(summary["shapes"]) == set(SHAPES) and summary["device"] == "cpu"
    assert all(0 < s["flop_ratio"] < 1 and "time_ratio_bf16" in s for s in summary["shapes"].values())
    assert "check passed" in done.stdout and not (out / "sim").exists()   # planned only: nothing started or written
