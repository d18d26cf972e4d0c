"""RunDir: the one place that names the files of a run directory, and the variable that carries it."""
from pathlib import Path

import pytest

from fedpft_algo.rundir.layout import ENV_VAR, RunDir
from fedpft_algo.rundir.records import RunLog, read_statuses

# The names a run directory has always had: runs made by earlier versions (``fedpft predict``,
# ``fedpft run --resume``) and the tools that read them depend on them.
NAMES = {"config": "config.yaml", "resume_config": "config.resume.yaml", "addresses": "grpc_ipconfig.csv",
         "metrics_jsonl": "metrics.jsonl", "metrics_csv": "metrics.csv", "metrics_json": "metrics.json",
         "accuracy_png": "accuracy.png", "partition_json": "partition.json", "partition_txt": "partition.txt",
         "final_weights": "final/trainable.safetensors", "checkpoints": "checkpoint", "status_dir": "status",
         "events_dir": "events", "logs": "logs", "home": "home", "processes_log": "logs/processes.jsonl"}


@pytest.mark.parametrize("attribute, name", NAMES.items())
def test_each_file_has_its_name_inside_the_run_directory(tmp_path, attribute, name):
    assert getattr(RunDir(tmp_path), attribute) == tmp_path / name


def test_participant_files_are_named_by_role_and_rank(tmp_path):
    run_dir = RunDir(tmp_path)
    assert run_dir.status_file("client_2") == tmp_path / "status" / "client_2.json"
    assert run_dir.events_file("server_0") == tmp_path / "events" / "server_0.jsonl"
    assert run_dir.log_file("mpirun") == tmp_path / "logs" / "mpirun.log"


def test_from_env_reads_what_env_writes(tmp_path):
    run_dir = RunDir(str(tmp_path))   # a string is taken as a path
    assert run_dir.env() == {ENV_VAR: str(tmp_path)} and ENV_VAR == "FEDPFT_RUN_DIR"
    assert RunDir.from_env(run_dir.env()) == run_dir and run_dir.root == tmp_path
    assert RunDir.from_env({}) is None and RunDir.from_env({ENV_VAR: ""}) is None


def test_from_env_defaults_to_the_process_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert RunDir.from_env() == RunDir(tmp_path)
    monkeypatch.delenv(ENV_VAR)
    assert RunDir.from_env() is None


def test_a_run_dir_is_a_path_like(tmp_path):
    assert Path(RunDir(tmp_path)) == tmp_path


def test_runlog_writes_where_the_layout_says_and_read_statuses_finds_it(tmp_path):
    run_dir = RunDir(tmp_path)
    log = RunLog(run_dir, "client", 2)
    log.status("training", 3)
    log.event("train", 3, clients=1)
    RunLog(run_dir, "server", 0).metrics({"round": 3, "accuracy": 0.5})
    statuses = read_statuses(run_dir)
    assert list(statuses) == ["client_2"]
    assert {k: statuses["client_2"][k] for k in ("role", "rank", "round", "phase")} == \
        {"role": "client", "rank": 2, "round": 3, "phase": "training"}
    assert run_dir.events_file("client_2").read_text() == '{"hook": "train", "round": 3, "clients": 1}\n'
    assert run_dir.metrics_jsonl.read_text() == '{"round": 3, "accuracy": 0.5}\n'


def test_runlog_without_a_run_directory_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    log = RunLog(None, "server", 0)
    log.status("done", 1)
    log.metrics({"round": 0})
    assert (log.phase, log.round) == ("done", 1) and list(tmp_path.iterdir()) == []
