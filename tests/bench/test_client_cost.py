"""The client-cost probe, as the bench starts it: one client's model in a process of its own."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.process


def _probe(model_dir, kind):
    command = [sys.executable, "-m", "fedpft_algo.bench.client_cost", "--model", str(model_dir), "--kind", kind,
               "--task", "rotten_tomatoes", "--examples", "16", "--batch-size", "8", "--repeats", "1",
               "--config-json", json.dumps({"retained_layers": [0]}), "--profile"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # one JSON line


def test_probe_reports_time_memory_and_where_the_time_goes(minilm_2layer):
    # Execute: a 2-layer MiniLM client (layer 1 compressed in the sub-FM), 16 real examples, profiled
    results = {kind: _probe(minilm_2layer, kind) for kind in ("sub_model", "full_lora")}

    # Assert: memory grows base -> built -> peak; the profile names real operators; the sub-FM is smaller
    for kind, result in results.items():
        assert result["kind"] == kind and result["steps"] == 2 and result["epoch_seconds"] > 0
        assert 0 < result["base_rss_mb"] < result["built_rss_mb"] <= result["peak_rss_mb"]
        assert result["peak_reset_after_data"] is True  # Linux: the data set's loading peak is not counted
        ops = result["profile_top_ops"]
        assert ops["(all operators)"] > 0 and any(name.startswith("aten::") for name in ops)
        assert sum(v for k, v in ops.items() if k != "(all operators)") <= ops["(all operators)"] + 1e-9
    sub, full = results["sub_model"], results["full_lora"]
    assert sub["flops_per_token"] < full["flops_per_token"]
    assert sub["client_model_bytes"] < full["client_model_bytes"]
    assert sub["trainable_parameters"] == full["trainable_parameters"]  # the same LoRA + head
