"""``fedpft run --resume``: a run killed after round r and resumed ends with the same per-round
metrics as an uninterrupted run with the same seed (real ``mpirun`` MPI simulation, 2-layer MiniLM)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from fedpft_algo.rundir import checkpoint
from fedpft_algo.launch.processes import session_pids
from fedpft_algo.rundir.layout import RunDir
from tests.runtime.test_fedml_integration import CONFIG_DIR, fedpft_run, small_run_overrides

pytestmark = [pytest.mark.process, pytest.mark.timeout(600)]

# what a round computes; times and process ids legitimately differ
COMPARED = ("round", "accuracy", "sub_accuracy", "loss", "macro_f1", "train_loss", "upload_bytes", "download_bytes",
            "align", "changed_tensors", "grad_rel_error_before", "grad_rel_error_after")


def overrides(model_dir, cache):
    # 4 rounds, 2 of 4 clients per round (so sampling matters), neuron-level alignment after rounds 1-3
    return small_run_overrides(model_dir, cache) + ["comm_round=4", "client_num_in_total=4", "max_train_examples=96"]


def rows(run_dir):
    return [{k: row.get(k) for k in COMPARED} for row in json.loads((run_dir / "metrics.json").read_text())]


def test_killed_mpi_run_resumes_to_the_same_metrics(minilm_2layer, tmp_path):
    cache = tmp_path / "cache"
    whole = fedpft_run("simulation_mpi.yaml", tmp_path / "whole", overrides(minilm_2layer, cache))
    assert whole.returncode == 0, whole.stderr[-3000:]

    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "fedpft_algo.cli", "run", "--cf", str(CONFIG_DIR / "simulation_mpi.yaml"),
               "--out", str(run_dir), "--timeout", "400", "--round-timeout", "240"]
    for item in overrides(minilm_2layer, cache):
        command += ["--set", item]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 400
    while checkpoint.latest(run_dir) is None or checkpoint.latest(run_dir).rounds_done < 2:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint of round 2 in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # the user stops the run: fedpft run stops every participant
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    pids = [json.loads(line)["pid"] for line in (run_dir / "logs" / "processes.jsonl").read_text().splitlines()]
    assert session_pids(pids) == [], "processes of the killed run are still alive"
    done = checkpoint.latest(run_dir).rounds_done
    assert 2 <= done < 4, f"the run was not interrupted mid-way (checkpoint after {done} rounds)"
    assert "fedpft run --resume" in err

    resumed = subprocess.run([sys.executable, "-m", "fedpft_algo.cli", "run", "--resume", str(run_dir),
                              "--timeout", "400", "--round-timeout", "240"],
                             capture_output=True, text=True, timeout=450)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"round {done + 1}/4" in resumed.stdout
    assert rows(run_dir) == rows(tmp_path / "whole")
    final, reference = (load_file(str(d / "final" / "trainable.safetensors")) for d in (run_dir, tmp_path / "whole"))
    assert final.keys() == reference.keys() and all((final[k] == reference[k]).all() for k in final)
    events = [json.loads(line) for line in (run_dir / "events" / "server_0.jsonl").read_text().splitlines()]
    assert [e["round"] for e in events if e["hook"] == "resume"] == [done]
    assert os.path.exists(RunDir(run_dir).resume_config)
