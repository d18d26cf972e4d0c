"""FedPFT through FedML's real multi-process paths, on a 2-layer cut of the real MiniLM-L6.

Each test starts real processes with ``fedpft run`` (mpirun for MPI simulation and cross-silo
MPI, one OS process per participant for cross-silo GRPC) and then reads what the participants
recorded: the order of FedML's hook calls on both sides, every tensor a client received (the
payload audit), what clients uploaded, and the per-round metrics.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fedpft_algo.rundir import checkpoint
from fedpft_algo import launch as launcher
from fedpft_algo.launch import processes
from fedpft_algo.rundir.layout import RunDir
from fedpft_algo.rundir.records import read_statuses
from tests.helpers import pythonpath

TESTS_DIR = Path(__file__).resolve().parents[1]
CONFIG_DIR = TESTS_DIR.parent / "fedml_config"
FFN_IN = "intermediate.dense.weight"
FFN_OUT = "output.dense.weight"

pytestmark = [pytest.mark.process, pytest.mark.timeout(420)]


def small_run_overrides(model_dir: Path, cache: Path) -> list:
    return [
        f"model={model_dir}", f"data_cache_dir={cache}", "comm_round=2", "client_num_in_total=2",
        "client_num_per_round=2", "max_train_examples=64", "max_test_examples=32", "batch_size=16",
        "fedpft_retained_layers=[0]", "fedpft_align_interval=1", "fedpft_layer_align_steps=3",
        "fedpft_neuron_align_steps=2", "fedpft_public_size=80", "fedpft_max_length=32",
    ]


def fedpft_run(config: str, out: Path, overrides: list, timeout: float = 360) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "fedpft_algo.cli", "run", "--cf", str(CONFIG_DIR / config), "--out", str(out),
               "--timeout", str(timeout - 30), "--round-timeout", "240"]
    for item in overrides:
        command += ["--set", item]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def read_events(run_dir: Path, name: str) -> list:
    return [json.loads(line) for line in (run_dir / "events" / f"{name}.jsonl").read_text().splitlines()]


def hooks(events: list) -> list:
    return [e["hook"] for e in events]


def assert_fedpft_run(run_dir: Path, client_hooks_per_round: list) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [row["round"] for row in metrics] == [0, 1]
    assert [row["align"] for row in metrics] == [True, False]  # t = 1, never after the last round
    assert all(0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["sub_accuracy"] <= 1.0 for row in metrics)
    assert (run_dir / "final" / "trainable.safetensors").stat().st_size > 0

    # server: pre-round hook once, then per round the three aggregation hooks, plug-in inside the last
    server = hooks(read_events(run_dir, "server_0"))
    assert server[:2] == ["pre_round", "get_model_params"]
    per_round = [h for h in server if h in ("on_before_aggregation", "aggregate", "on_after_aggregation",
                                           "neuron_alignment", "set_model_params")]
    assert per_round == ["on_before_aggregation", "aggregate", "on_after_aggregation", "neuron_alignment",
                         "set_model_params",
                         "on_before_aggregation", "aggregate", "on_after_aggregation", "set_model_params"]
    uploads = [e for e in read_events(run_dir, "server_0") if e["hook"] == "on_before_aggregation"]
    # clients upload only LoRA/head tensors, activation counts (alignment round) and training scalars
    assert [sorted(e["kinds"]) for e in uploads] == [["lora", "metrics", "stats"], ["lora", "metrics"]]

    for name in ("client_1", "client_2"):
        events = read_events(run_dir, name)
        calls = [h for h in hooks(events) if h in client_hooks_per_round]
        n = len(client_hooks_per_round)
        assert calls[:2 * n] == client_hooks_per_round * 2
        assert "train" not in calls[2 * n:]  # FedML's cross-silo finish may call update_dataset once more
        received = [e["tensors"] for e in events if e["hook"] == "set_model_params"]
        # cross-silo also syncs the final aggregate to the clients when it finishes: a third payload
        assert len(received) >= 2 and all(set(r) <= set(received[1]) for r in received[2:])
        # round 0: the whole sub-FM; round 1: LoRA/head plus the FFN tensors alignment changed
        assert any(k.endswith("layer.1." + FFN_IN) for k in received[1])
        assert all(("lora_" in k or "modules_to_save" in k or ".layer.1." in k) for k in received[1])
        # payload audit: no tensor of a compressed layer's FFN has the FM's shape, and all rounds
        # together carry at most k = 384 of the FM's 1536 neurons of layer 1
        for payload in received:
            for key, shape in payload.items():
                if ".layer.1." in key and key.endswith(FFN_IN):
                    assert shape == [384, 384], (key, shape)
                if ".layer.1." in key and key.endswith(FFN_OUT) and "attention" not in key:
                    assert shape == [384, 384], (key, shape)
        stats_rounds = [e["stats"] for e in events if e["hook"] == "get_model_params"]
        assert stats_rounds == [True, False]


def test_mpi_simulation_calls_fedpft_hooks_every_round(minilm_2layer, tmp_path):
    result = fedpft_run("simulation_mpi.yaml", tmp_path / "run", small_run_overrides(minilm_2layer, tmp_path / "c"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_fedpft_run(tmp_path / "run", ["set_model_params", "train", "get_model_params"])
    # the console: the server's phases before round 1 (one line each off a terminal), no library warnings
    assert "fedpft: server: loading the data and the FM" in result.stderr.splitlines()
    assert "fedpft: server: sub-FM ready; the rounds start" in result.stderr.splitlines()
    assert "Warning" not in result.stderr and "pkg_resources" in (tmp_path / "run/logs/launcher.log").read_text()
    # each client process knows which client it plays (its seeds, its DP noise depend on it)
    played = {(e["round"], e["client"]) for name in ("client_1", "client_2")
              for e in read_events(tmp_path / "run", name) if e["hook"] == "train"}
    assert played == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_cross_silo_grpc_calls_fedpft_hooks_every_round(minilm_2layer, tmp_path):
    result = fedpft_run("cross_silo_grpc.yaml", tmp_path / "run", small_run_overrides(minilm_2layer, tmp_path / "c"))
    assert result.returncode == 0, result.stderr[-3000:]
    for rank, role in ((0, "server"), (1, "client"), (2, "client")):  # each listens on loopback only
        log = (tmp_path / "run" / "logs" / f"{role}_{rank}.log").read_text(errors="replace")
        assert "Started gRPC server: 127.0.0.1:" in log and "Started gRPC server: 0.0.0.0" not in log
    assert_fedpft_run(tmp_path / "run", ["update_dataset", "set_model_params", "on_before_local_training", "train",
                                         "on_after_local_training", "get_model_params"])


def test_cross_silo_mpi_calls_fedpft_hooks_every_round(minilm_2layer, tmp_path):
    result = fedpft_run("cross_silo_mpi.yaml", tmp_path / "run", small_run_overrides(minilm_2layer, tmp_path / "c"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_fedpft_run(tmp_path / "run", ["update_dataset", "set_model_params", "on_before_local_training", "train",
                                         "on_after_local_training", "get_model_params"])


@pytest.mark.parametrize("config", ["simulation_mpi.yaml", "cross_silo_grpc.yaml"])
def test_failing_client_stops_the_run_without_leftovers(minilm_2layer, tmp_path, monkeypatch, config):
    monkeypatch.setenv("PYTHONPATH", pythonpath())
    monkeypatch.setattr(processes, "PARTICIPANT_MODULE", "failing_participant")
    overrides = small_run_overrides(minilm_2layer, tmp_path / "c")
    plan = launcher.plan_run(CONFIG_DIR / config, overrides)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    start = time.monotonic()
    with pytest.raises(launcher.RunFailed, match=r"client rank 1 failed in round 2: .*injected failure"):
        launcher.launch(plan, run_dir, expect=[RunDir.FINAL_WEIGHTS], timeout=300, round_timeout=200, progress=False)
    saved = checkpoint.latest(run_dir)  # the checkpoint of round 1 survives the failure, whole and loadable
    assert saved.rounds_done == 1 and saved.load_tensors()["rng.server_generator"].dtype == torch.uint8
    statuses = read_statuses(run_dir)
    # the failure is seen and everything stopped within 30 s of the client's failure
    failed_at = statuses["client_1"]["time"]
    assert time.time() - failed_at < 30
    assert time.monotonic() - start < 300
    pids = [s["pid"] for s in statuses.values()]
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()], "a participant outlived the run"


def test_unknown_fedpft_key_is_a_one_line_error(tmp_path):
    result = fedpft_run("simulation_mpi.yaml", tmp_path / "run", ["fedpft_align_intervall=2"], timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "fedpft_align_intervall" in result.stderr and "fedpft_align_interval" in result.stderr
    assert not (tmp_path / "run").exists()


def test_csv_with_unusual_columns_runs_end_to_end(minilm_2layer, tmp_path):
    """A user's CSV (odd column names, string labels) through `fedpft run` (sp, 2 clients, 1 round)."""
    import csv

    from fedpft_algo.data import load_task

    task = load_task("rotten_tomatoes", max_train=60, max_test=20)
    path = tmp_path / "my reviews.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Review Text", "Critic Verdict"])
        for text, label in zip(list(task.train_inputs) + list(task.test_inputs),
                               list(task.train_labels) + list(task.test_labels)):
            writer.writerow([text, "thumbs up" if label == 1 else "thumbs down"])
    overrides = small_run_overrides(minilm_2layer, tmp_path / "c") + [
        f"dataset={path}", "comm_round=1", "fedpft_text_columns=Review Text", "fedpft_label_column=Critic Verdict"]
    result = fedpft_run("simulation_sp.yaml", tmp_path / "run", overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics) == 1 and metrics[0]["test_total"] > 0
    partition = json.loads((tmp_path / "run" / "partition.json").read_text())
    assert len(partition) == 2 and set(partition[0]["label_counts"]) == {"thumbs down", "thumbs up"}


@pytest.mark.parametrize("override, message", [
    ("dataset=/nonexistent/reviews.csv", "data file or directory not found: /nonexistent/reviews.csv"),
    ("fedpft_label_column=Verdict", "text_columns/label_column apply to files only"),
])
def test_data_mistake_found_by_a_participant_is_a_one_line_input_error(tmp_path, override, message):
    result = fedpft_run("simulation_sp.yaml", tmp_path / "run", [override], timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("fedpft: error: ")]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
