"""The local launcher: config resolution and validation (unit), GRPC address files, ports, results files,
and real multi-process runs of every topology (sp, mpirun, GRPC) with ``tests/helpers/fake_participant.py``.

The fake speaks the participant contract in ~0.1 s per round, so process tests take seconds; each
checks with ``/proc`` that no process of the run is left.
"""
import json
import socket
import sys
import time
from pathlib import Path

import pytest
import yaml

from fedpft_algo import launch as launcher
from fedpft_algo.config import flatten
from fedpft_algo.errors import ConfigError
from fedpft_algo.launch import processes, supervisor
from fedpft_algo.rundir import results
from fedpft_algo.launch.addresses import (Address, check_ports_free, free_loopback_addresses, read_address_file,
                                          write_address_file)
from fedpft_algo.launch.plan import apply_overrides, for_participants
from fedpft_algo.rundir.layout import RunDir
from fedpft_algo.rundir.records import MetricsTail, read_statuses
from tests.helpers import pythonpath
from tests.helpers.fake_participant import live_processes, started_pids

TESTS_DIR = Path(__file__).resolve().parents[1]
CONFIG_DIR = TESTS_DIR.parent / "fedml_config"
SHIPPED = ("simulation_sp", "simulation_mpi", "cross_silo_mpi", "cross_silo_grpc")

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def fake(monkeypatch):
    """Participants are ``tests/helpers/fake_participant.py``; FAKE_* switches cleared."""
    monkeypatch.setenv("PYTHONPATH", pythonpath())
    for name in ("FAKE_FAIL", "FAKE_HANG", "FAKE_IGNORE_TERM", "FAKE_EXIT_EARLY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(processes, "PARTICIPANT_MODULE", "fake_participant")
    return monkeypatch


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def shipped(name: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())


# ====================================================================== --set overrides
@pytest.mark.parametrize("text, expected", [
    ("comm_round=2", ("comm_round", 2)),
    ("partition_alpha=0.5", ("partition_alpha", 0.5)),
    ("fedpft_retained_layers=[0,5]", ("fedpft_retained_layers", [0, 5])),
    ("using_gpu=true", ("using_gpu", True)),
    ("max_train_examples=null", ("max_train_examples", None)),
    ("dataset=hub:glue:sst2", ("dataset", "hub:glue:sst2")),
    ("model= minilm-l6 ", ("model", "minilm-l6")),
    ("fedpft_public_dataset=", ("fedpft_public_dataset", "")),
])
def test_parse_override_values_are_yaml(text, expected):
    assert launcher.parse_override(text) == expected


@pytest.mark.parametrize("text", ["comm_round", "=3", "x=[1,"])
def test_parse_override_malformed_names_the_argument(text):
    with pytest.raises(ConfigError, match="--set"):
        launcher.parse_override(text)


def test_apply_overrides_sets_the_key_in_the_section_that_holds_it(tmp_path):
    config = shipped("simulation_mpi")
    apply_overrides(config, ["comm_round=2", "fedpft_lora_r=4", "fedpft_new_key=1",
                                      "data_args.max_test_examples=7", "model_args.extra=x"], cwd=tmp_path)
    assert config["train_args"]["comm_round"] == 2
    assert config["fedpft_args"]["fedpft_lora_r"] == 4
    assert config["fedpft_args"]["fedpft_new_key"] == 1          # unknown fedpft_ keys land in fedpft_args
    assert config["data_args"]["max_test_examples"] == 7
    assert config["model_args"]["extra"] == "x"                   # SECTION.KEY may add a key
    assert "comm_round" not in config["common_args"]


def test_apply_overrides_unknown_key_is_an_error_with_a_hint(tmp_path):
    with pytest.raises(ConfigError, match=r"--set comm_rounds: no section .*did you mean comm_round\?"):
        apply_overrides(shipped("simulation_mpi"), ["comm_rounds=3"], cwd=tmp_path)


# ====================================================================== paths
def test_plan_run_resolves_yaml_paths_against_its_dir_and_set_paths_against_cwd(tmp_path):
    conf_dir, cwd = tmp_path / "conf", tmp_path / "work"
    (conf_dir / "data").mkdir(parents=True)
    (conf_dir / "data" / "train.csv").write_text("text,label\n")
    cwd.mkdir()
    config = shipped("simulation_sp")
    config["data_args"].update(dataset="data/train.csv", data_cache_dir="cache")
    plan = launcher.plan_run(write_yaml(conf_dir / "c.yaml", config), ["fedpft_cache_dir=here"], cwd=cwd)
    assert plan.config["data_args"]["dataset"] == str(conf_dir / "data" / "train.csv")
    assert plan.config["data_args"]["data_cache_dir"] == str(conf_dir / "cache")
    assert plan.config["fedpft_args"]["fedpft_cache_dir"] == str(cwd / "here")
    assert plan.config_file == conf_dir / "c.yaml"


def test_plan_run_keeps_dataset_names_and_expands_the_users_home(tmp_path):
    config = shipped("simulation_sp")
    config["data_args"]["data_cache_dir"] = "~/fedml_data"
    plan = launcher.plan_run(write_yaml(tmp_path / "c.yaml", config), ["fedpft_public_dataset=trec6"], cwd=tmp_path)
    assert plan.config["data_args"]["dataset"] == "rotten_tomatoes"
    assert plan.config["fedpft_args"]["fedpft_public_dataset"] == "trec6"
    assert plan.config["data_args"]["data_cache_dir"] == str(Path.home() / "fedml_data")


def test_participants_config_pins_the_default_cache_to_the_users_home(tmp_path):
    config = shipped("simulation_sp")
    del config["data_args"]["data_cache_dir"]
    plan = launcher.plan_run(write_yaml(tmp_path / "c.yaml", config), cwd=tmp_path)
    assert "data_cache_dir" not in plan.config["data_args"]
    # the participants' HOME is inside the run dir; their default cache must stay ~/.cache/fedpft
    written = for_participants(plan, RunDir(tmp_path / "run"))
    assert written["data_args"]["data_cache_dir"] == str(Path.home() / ".cache")
    assert written["tracking_args"]["log_file_dir"] == str(tmp_path / "run" / "logs")


# ====================================================================== shipped configs and topology
@pytest.mark.parametrize("name, backend, processes", [("simulation_sp", "sp", 1), ("simulation_mpi", "MPI", 3),
                                                      ("cross_silo_mpi", "MPI", 3), ("cross_silo_grpc", "GRPC", 3)])
def test_shipped_configs_are_valid(name, backend, processes, tmp_path):
    plan = launcher.plan_run(CONFIG_DIR / f"{name}.yaml", cwd=tmp_path)
    assert (plan.backend, plan.num_processes) == (backend, processes)
    flat = flatten(plan.config)
    assert flat["federated_optimizer"] == "FedAvg" and flat["enable_wandb"] is False
    assert flat["using_mlops"] is False and flat["data_cache_dir"] == str(CONFIG_DIR / ".cache")
    if plan.training_type == "cross_silo":
        assert (flat["client_id_list"], flat["worker_num"]) == ("[]", 2)
    if backend == "GRPC":   # no address file named: free loopback ports
        assert [(a.rank, a.ip) for a in plan.addresses] == [(0, "127.0.0.1"), (1, "127.0.0.1"), (2, "127.0.0.1")]


def test_plan_run_sets_cross_silo_ids_and_worker_num_when_missing(tmp_path):
    config = shipped("cross_silo_mpi")
    del config["train_args"]["client_id_list"], config["device_args"]["worker_num"]
    config["train_args"].update(client_num_in_total=5, client_num_per_round=3)
    plan = launcher.plan_run(write_yaml(tmp_path / "c.yaml", config), cwd=tmp_path)
    assert plan.config["train_args"]["client_id_list"] == "[]"   # FedML derives one id per rank
    assert plan.config["device_args"]["worker_num"] == 3


def test_prepare_run_dir_writes_the_resolved_config_and_copies_the_address_file(tmp_path):
    given = free_loopback_addresses(3)
    write_address_file(tmp_path / "ip.csv", given)
    plan = launcher.plan_run(CONFIG_DIR / "cross_silo_grpc.yaml", ["comm_round=2", "comm_args.grpc_ipconfig_path=ip.csv"],
                             cwd=tmp_path)
    assert plan.addresses == given
    run_dir = tmp_path / "run"
    config = yaml.safe_load(supervisor.prepare_run_dir(plan, RunDir(run_dir)).read_text())
    assert config["train_args"]["comm_round"] == 2
    assert config["tracking_args"]["log_file_dir"] == str(run_dir / "logs")
    assert config["comm_args"]["grpc_ipconfig_path"] == str(run_dir / "grpc_ipconfig.csv")
    assert read_address_file(run_dir / "grpc_ipconfig.csv", 2) == plan.addresses
    assert {p.name for p in run_dir.iterdir()} == {"config.yaml", "grpc_ipconfig.csv", "logs", "status", "home"}


# ====================================================================== GRPC address files and ports
def test_address_file_round_trip(tmp_path):
    addresses = [Address(r, "127.0.0.1", 9000 + r) for r in range(4)]
    write_address_file(tmp_path / "a.csv", addresses)
    assert (tmp_path / "a.csv").read_text().splitlines()[:2] == ["eid,rank,grpc_server_ip,grpc_server_port",
                                                                 "0,0,127.0.0.1,9000"]
    assert read_address_file(tmp_path / "a.csv", 3) == addresses


def test_shipped_address_file_matches_the_shipped_grpc_config():
    rows = read_address_file(CONFIG_DIR / "grpc_ipconfig.csv", 2)
    assert [(a.rank, a.ip, a.port) for a in rows] == [(0, "127.0.0.1", 8890), (1, "127.0.0.1", 8891),
                                                     (2, "127.0.0.1", 8892)]


HEADER = "eid,rank,grpc_server_ip,grpc_server_port\n"


@pytest.mark.parametrize("text, message", [
    ("", r"line 1: expected the header"),
    ("rank,ip,port\n0,127.0.0.1,1\n", r"line 1: expected the header"),
    (HEADER + "0,0,127.0.0.1,9000\n1,1,127.0.0.1,9001\n", r"no row for rank\(s\) \[2\]"),
    (HEADER + "0,0,127.0.0.1,9000\n1,1,127.0.0.1,99999\n2,2,127.0.0.1,9002\n", r"line 3: .*port in 1..65535"),
    (HEADER + "0,0,127.0.0.1,9000\n1,1,127.0.0.1,http\n", r"line 3"),
    (HEADER + "0,0,127.0.0.1,9000\n5,1,127.0.0.1,9001\n", r"line 3: .*EID = RANK"),
    (HEADER + "0,0,127.0.0.1,9000\n0,0,127.0.0.1,9001\n", r"line 3: rank 0 is repeated"),
    (HEADER + "0,0,127.0.0.1,9000\n1,1,127.0.0.1,9001\n2,2,127.0.0.1,9002\n3,3,127.0.0.1,9003\n",
     r"line 5: rank 3 is out of range"),
])
def test_read_address_file_errors_name_file_and_line(tmp_path, text, message):
    (tmp_path / "ip.csv").write_text(text)
    with pytest.raises(ConfigError, match=rf"GRPC address file .*ip\.csv.*{message}"):
        read_address_file(tmp_path / "ip.csv", 2)


def test_free_loopback_addresses_are_distinct_and_bindable():
    addresses = free_loopback_addresses(5)
    assert [a.rank for a in addresses] == [0, 1, 2, 3, 4]
    assert len({a.port for a in addresses}) == 5
    check_ports_free(addresses, None)


def test_check_ports_free_detects_a_listening_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = [Address(0, "127.0.0.1", port)]
        with pytest.raises(ConfigError, match=rf"rank 0: port in use: 127\.0\.0\.1:{port}"):
            check_ports_free(taken, Path("ip.csv"))


# ====================================================================== results files
def test_metrics_tail_returns_only_complete_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read_new() == []
    path.write_text('{"round": 0}\n{"round"')
    assert tail.read_new() == [{"round": 0}]
    with open(path, "a") as f:
        f.write(': 1}\nnot json\n[1]\n{"round": 2}\n')
    assert tail.read_new() == [{"round": 1}, {"round": 2}]
    assert tail.read_new() == []


def test_format_round_line():
    record = {"round": 2, "accuracy": 0.7123, "sub_accuracy": 0.69, "loss": 0.5812, "upload_bytes": 1_234_567,
              "round_seconds": 34.12, "align": False}
    assert results.format_round(record, 3, 10) == "round 3/10  acc 0.712  sub_acc 0.690  loss 0.581  up 1.2 MB  34.1 s"
    assert results.format_round({"align": True}, 1, 2) == \
        "round 1/2  acc -  sub_acc -  loss -  up -  - s  (neuron-level alignment)"


def test_write_results_writes_csv_json_and_png(tmp_path):
    rounds = [{"round": 0, "accuracy": 0.5, "sub_accuracy": 0.4, "loss": 0.7, "extra": 1, "align": False},
              {"round": 1, "loss": 0.6, "accuracy": 0.6, "sub_accuracy": None, "align": True, "more": [1, 2]}]
    csv_path, json_path, png_path = results.write_results(tmp_path, rounds)
    assert json.loads(json_path.read_text()) == rounds
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "round,accuracy,sub_accuracy,loss,align,extra,more"
    assert lines[2] == '1,0.6,,0.6,True,,"[1, 2]"'
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_results_without_accuracy_skips_the_plot(tmp_path):
    assert results.write_results(tmp_path, [{"round": 0, "loss": 1.0}])[2] is None
    assert not (tmp_path / "accuracy.png").exists()


def test_write_results_without_matplotlib_writes_the_metrics_and_says_the_plot_is_missing(tmp_path, monkeypatch,
                                                                                          caplog):
    for name in ("matplotlib", "matplotlib.backends.backend_agg", "matplotlib.figure", "matplotlib.ticker"):
        monkeypatch.setitem(sys.modules, name, None)   # `import` raises ModuleNotFoundError
    rounds = [{"round": 0, "accuracy": 0.5, "sub_accuracy": 0.4, "loss": 0.7}]
    with caplog.at_level("WARNING"):
        csv_path, json_path, png_path = results.write_results(tmp_path, rounds)
    assert png_path is None and not (tmp_path / "accuracy.png").exists()
    assert json.loads(json_path.read_text()) == rounds and csv_path.exists()
    assert "matplotlib is not installed" in caplog.text and "accuracy.png not written" in caplog.text


# ====================================================================== real processes with the fake participant
TOPOLOGIES = {  # name -> (shipped config, extra overrides, rank that fails/hangs)
    "sp": ("simulation_sp", [], 0),
    "simulation_mpi": ("simulation_mpi", [], 2),
    "cross_silo_mpi": ("cross_silo_mpi", [], 2),
    "grpc": ("cross_silo_grpc", [], 2),
}


def plan_for(topology: str, tmp_path: Path, *extra: str) -> launcher.RunPlan:
    name, overrides, _ = TOPOLOGIES[topology]
    return launcher.plan_run(CONFIG_DIR / f"{name}.yaml", ["comm_round=3", *overrides, *extra], cwd=tmp_path)


@pytest.mark.process
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_launch_runs_every_round_and_leaves_no_process(topology, fake, tmp_path):
    run_dir = tmp_path / "run"
    rounds = launcher.launch(plan_for(topology, tmp_path), run_dir, expect=[RunDir.FINAL_WEIGHTS], timeout=60,
                             round_timeout=20, progress=False)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    statuses = read_statuses(run_dir)
    expected = {"server_0"} if topology == "sp" else {"server_0", "client_1", "client_2"}
    assert set(statuses) == expected and {s["phase"] for s in statuses.values()} == {"done"}
    assert (run_dir / "final" / "trainable.safetensors").exists()
    assert live_processes(started_pids(run_dir)) == []


@pytest.mark.process
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_launch_crashing_participant_fails_fast_naming_it_and_its_round(topology, fake, tmp_path):
    rank = TOPOLOGIES[topology][2]
    fake.setenv("FAKE_FAIL", f"{rank}:1")
    run_dir = tmp_path / "run"
    start = time.monotonic()
    with pytest.raises(launcher.RunFailed) as failed:
        launcher.launch(plan_for(topology, tmp_path), run_dir, timeout=60, round_timeout=60, progress=False)
    assert time.monotonic() - start < 30
    role = "server" if rank == 0 else "client"
    assert str(failed.value) == (f"{role} rank {rank} failed in round 2: "
                                 f"FakeError: injected failure of rank {rank} in round index 1")
    assert live_processes(started_pids(run_dir)) == []


@pytest.mark.process
@pytest.mark.parametrize("topology", ["simulation_mpi", "grpc"])
@pytest.mark.parametrize("rank", [0, 1])
def test_launch_killed_participant_is_named_and_the_run_stopped(topology, rank, fake, tmp_path):
    fake.setenv("FAKE_KILL", f"{rank}:1")   # kill -9 of the server or a client in round index 1
    run_dir = tmp_path / "run"
    start = time.monotonic()
    with pytest.raises(launcher.RunFailed) as failed:
        launcher.launch(plan_for(topology, tmp_path), run_dir, timeout=60, round_timeout=60, kill_grace=2,
                        progress=False)
    assert time.monotonic() - start < 30
    role = "server" if rank == 0 else "client"
    assert str(failed.value).startswith(f"{role} rank {rank} failed in round 2 (was killed by signal 9)"), failed.value
    assert live_processes(started_pids(run_dir)) == []


@pytest.mark.process
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_launch_hanging_participant_is_stopped_by_the_round_timeout(topology, fake, tmp_path):
    fake.setenv("FAKE_HANG", f"{TOPOLOGIES[topology][2]}:1")
    run_dir = tmp_path / "run"
    start = time.monotonic()
    with pytest.raises(launcher.RunFailed, match=r"round timeout: no round finished within --round-timeout 2 s; "
                                                 r"1 of 3 rounds finished; not done: .*round 2, training"):
        launcher.launch(plan_for(topology, tmp_path), run_dir, timeout=60, round_timeout=2, progress=False)
    assert time.monotonic() - start < 20
    assert live_processes(started_pids(run_dir)) == []


@pytest.mark.process
def test_launch_fails_a_run_without_the_files_its_caller_expects(fake, tmp_path):
    with pytest.raises(launcher.RunFailed, match=r"every participant exited 0 but the run directory has no "
                                                 r"final/adapter\.bin$"):
        launcher.launch(plan_for("sp", tmp_path), tmp_path / "run", expect=[RunDir.FINAL_WEIGHTS, "final/adapter.bin"],
                        timeout=60, round_timeout=20, progress=False)
    assert live_processes(started_pids(tmp_path / "run")) == []


@pytest.mark.process
def test_launch_total_timeout_stops_the_run(fake, tmp_path):
    fake.setenv("FAKE_HANG", "0:0")
    with pytest.raises(launcher.RunFailed, match=r"timeout: the run took longer than --timeout 1.5 s"):
        launcher.launch(plan_for("sp", tmp_path), tmp_path / "run", timeout=1.5, round_timeout=60, progress=False)
    assert live_processes(started_pids(tmp_path / "run")) == []


@pytest.mark.process
@pytest.mark.parametrize("topology", ["simulation_mpi", "grpc"])
def test_launch_kills_participants_that_ignore_sigterm(topology, fake, tmp_path):
    fake.setenv("FAKE_IGNORE_TERM", "1")
    fake.setenv("FAKE_HANG", "1:1")
    run_dir = tmp_path / "run"
    start = time.monotonic()
    with pytest.raises(launcher.RunFailed, match="round timeout"):
        launcher.launch(plan_for(topology, tmp_path), run_dir, timeout=60, round_timeout=1, kill_grace=1,
                        progress=False)
    assert time.monotonic() - start < 20
    assert live_processes(started_pids(run_dir)) == []


@pytest.mark.process
def test_launch_grpc_server_that_dies_before_listening_is_reported(fake, tmp_path):
    fake.setenv("FAKE_EXIT_EARLY", "0")
    run_dir = tmp_path / "run"
    with pytest.raises(launcher.RunFailed) as failed:
        launcher.launch(plan_for("grpc", tmp_path), run_dir, timeout=60, round_timeout=20, progress=False)
    assert str(failed.value) == ("server rank 0 failed before reporting a round (exited with code 3): "
                                 "ImportError: rank 0 exits before its first status")
    assert len(started_pids(run_dir)) == 1 and live_processes(started_pids(run_dir)) == []
