"""A one-round run (``comm_round: 1``) ends cleanly in every backend.

FedML 0.9.6's MPI simulation finishes a client only when a model for round ``comm_round - 1``
arrives after the init message, so with one round its clients waited forever
(:mod:`fedpft_algo.runtime.last_round`). Each test starts the real processes (``mpirun`` for MPI
simulation and cross-silo MPI, one OS process per participant for GRPC) on a 2-layer MiniLM.
"""
import json
from pathlib import Path

import pytest

from fedpft_algo.rundir.records import read_statuses
from tests.runtime.test_fedml_integration import fedpft_run, read_events, small_run_overrides

pytestmark = [pytest.mark.process, pytest.mark.timeout(420)]


@pytest.mark.parametrize("config", ["simulation_mpi.yaml", "cross_silo_mpi.yaml", "cross_silo_grpc.yaml",
                                    "simulation_sp.yaml"])
def test_one_round_run_ends_cleanly(minilm_2layer, tmp_path, config):
    run_dir = tmp_path / "run"
    overrides = small_run_overrides(minilm_2layer, tmp_path / "c") + ["comm_round=1"]
    # the round timeout would turn a hang into exit 1 ("not done: client rank 1 (round 1, training)")
    result = fedpft_run(config, run_dir, overrides, timeout=360)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finished 1 round(s)" in result.stdout

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [row["round"] for row in metrics] == [0]
    assert metrics[0]["align"] is False  # never after the last round
    assert (run_dir / "final" / "trainable.safetensors").stat().st_size > 0

    statuses = read_statuses(run_dir)
    expected = {"server_0"} if config == "simulation_sp.yaml" else {"server_0", "client_1", "client_2"}
    assert set(statuses) == expected
    assert {name: s["phase"] for name, s in statuses.items()} == {name: "done" for name in expected}
    # each rank's device: in its status file, and (server and clients) in the metrics row
    assert {name: s["device"] for name, s in statuses.items()} == {name: "cpu" for name in expected}
    assert metrics[0]["device"] == "cpu" and metrics[0]["client_devices"] == "cpu cpu"
    assert metrics[0]["client_peak_device_mem_mb"] is None and metrics[0]["client_tokens_per_second"] > 0
    csv_header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"device", "client_devices", "client_peak_device_mem_mb", "client_tokens_per_second"} <= set(csv_header)
    assert not [s["pid"] for s in statuses.values() if Path(f"/proc/{s['pid']}").exists()], \
        "a participant outlived the run"
    if config != "simulation_sp.yaml":
        for name in ("client_1", "client_2"):  # each client trained round 0 once, and nothing after it
            assert [e["round"] for e in read_events(run_dir, name) if e["hook"] == "train"] == [0]
