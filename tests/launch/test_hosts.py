"""mpirun across hosts: the hostfile read and checked before a run, rank placement, the exact mpirun command
line, and real mpirun runs on this host's slots (``--display map`` and the launcher with the fake participant).

The run across two hosts (network namespaces) is ``tests/runtime/test_mpi_hosts.py``.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from fedpft_algo import cli, launch as launcher
from fedpft_algo.errors import ConfigError
from fedpft_algo.launch import hosts, limits, processes
from fedpft_algo.launch.hosts import Host
from fedpft_algo.rundir.layout import RunDir
from tests.helpers import pythonpath
from tests.helpers.fake_participant import live_processes, started_pids

CONFIG_DIR = Path(__file__).resolve().parents[2] / "fedml_config"
pytestmark = pytest.mark.timeout(90)


def hostfile(tmp_path: Path, text: str, name: str = "hosts") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ====================================================================== reading and checking
def test_read_hostfile_keeps_file_order_and_skips_comments(tmp_path):
    path = hostfile(tmp_path, "# the server's host first\nnode1 slots=1   # server\n\nuser@node2 slots=4 max_slots=8\n"
                              "10.0.0.3 slots=2 max-slots=2\n")
    assert hosts.read_hostfile(path) == [Host("node1", 1), Host("user@node2", 4), Host("10.0.0.3", 2)]


@pytest.mark.parametrize("text, message", [
    ("node1\n", r"line 1: 'node1': expected 'HOST slots=N' with N >= 1"),
    ("node1 slots=0\n", r"line 1: 'node1 slots=0': expected 'HOST slots=N' with N >= 1"),
    ("node1 slots=2\nnode2 cpus=4\n", r"line 2: 'cpus=4' is not allowed: expected slots=N or max_slots=N"),
    ("node1 slots=two\n", r"line 1: 'slots=two' is not allowed"),
    ("node/1 slots=2\n", r"line 1: 'node/1' is not a host name or address"),
    ("node1 slots=4 max_slots=2\n", r"line 1: max_slots=2 is less than slots=4"),
    ("node1 slots=1\nnode1 slots=2\n", r"line 2: host 'node1' is named twice"),
    ("# nothing\n\n", r"names no host"),
])
def test_read_hostfile_errors_name_the_file_and_line(tmp_path, text, message):
    path = hostfile(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"^comm_args\.mpi_hostfile {path}(: | ){message}"):
        hosts.read_hostfile(path)


def test_read_hostfile_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"mpi_hostfile .*/nope: no such file \(an Open MPI hostfile"):
        hosts.read_hostfile(tmp_path / "nope")


def test_ranks_fill_each_hosts_slots_in_file_order():
    found = [Host("a", 1), Host("b", 2), Host("c", 4)]
    assert hosts.place_ranks(found, 5) == ["a", "b", "b", "c", "c"]
    assert hosts.describe_placement(found, 5) == "a: server rank 0; b: client ranks 1-2; c: client ranks 3-4"
    assert hosts.describe_placement([Host("a", 2), Host("b", 2)], 3) == "a: server rank 0, client rank 1; b: client rank 2"
    assert hosts.describe_placement([Host("a", 8), Host("b", 2)], 3) == "a: server rank 0, client ranks 1-2"


def test_mpirun_command_line_with_and_without_a_hostfile():
    env = {"FEDPFT_RUN_DIR": "/r", "HOME": "/r/home", "PYTHONPATH": "/p", "UNRELATED": "x"}
    assert hosts.mpirun_command("/v/bin/mpirun", 3, None, env) == ["/v/bin/mpirun", "--oversubscribe", "-np", "3"]
    assert hosts.mpirun_command("/v/bin/mpirun", 3, Path("/h"), env) == [
        "/v/bin/mpirun", "--hostfile", "/h", "--map-by", "slot", "--bind-to", "none", "-np", "3",
        "-x", "FEDPFT_RUN_DIR", "-x", "HOME", "-x", "PYTHONPATH"]


# ====================================================================== the plan
def test_hostfile_from_the_yaml_is_resolved_against_it_and_from_the_option_against_cwd(tmp_path):
    (tmp_path / "job").mkdir()
    hostfile(tmp_path / "job", "a slots=1\nb slots=2\n", "cluster")
    hostfile(tmp_path, "c slots=3\n", "mine")
    job = tmp_path / "job" / "job.yaml"
    job.write_text((CONFIG_DIR / "simulation_mpi.yaml").read_text().replace(
        'backend: "MPI"', 'backend: "MPI"\n  mpi_hostfile: "cluster"'))
    plan = launcher.plan_run(job, cwd=tmp_path)
    assert plan.hostfile == tmp_path / "job" / "cluster" and plan.hosts == [Host("a", 1), Host("b", 2)]
    plan = launcher.plan_run(job, cwd=tmp_path, hostfile="mine")
    assert plan.hostfile == tmp_path / "mine" and plan.config["comm_args"]["mpi_hostfile"] == str(tmp_path / "mine")


def test_hosts_with_fewer_slots_than_processes_are_refused(tmp_path):
    path = hostfile(tmp_path, "a slots=1\nb slots=1\n")
    with pytest.raises(ConfigError, match=r"mpi_hostfile .*: 2 slot\(s\) on 2 host\(s\) is fewer than the run's 3 "
                                          r"processes \(1 server \+ 2 clients\)"):
        launcher.plan_run(CONFIG_DIR / "cross_silo_mpi.yaml", ["client_num_per_round=2"], hostfile=str(path))


def _gpu_plan(tmp_path, hostfile_text: str, mapping: dict):
    (tmp_path / "mapping.yaml").write_text(yaml.safe_dump({"key": mapping}, sort_keys=False))   # file order counts
    return launcher.plan_run(CONFIG_DIR / "simulation_mpi.yaml",
                             ["using_gpu=true", f"gpu_mapping_file={tmp_path / 'mapping.yaml'}", "gpu_mapping_key=key"],
                             hostfile=str(hostfile(tmp_path, hostfile_text)))


def test_gpus_across_hosts_need_no_gpu_on_the_launching_host(tmp_path):
    # a head node without CUDA starts ranks on two GPU nodes: their GPUs are theirs to check
    plan = _gpu_plan(tmp_path, "gpu-a slots=1\ngpu-b slots=2\n", {"gpu-a": [1], "gpu-b": [1, 1]})
    assert limits.check_devices(plan, cuda_devices=0) == {0: "cuda:0", 1: "cuda:0", 2: "cuda:1"}


def test_a_mapping_that_groups_ranks_unlike_the_hostfile_is_refused(tmp_path):
    plan = _gpu_plan(tmp_path, "gpu-a slots=1\ngpu-b slots=2\n", {"gpu-a": [2], "gpu-b": [1]})
    with pytest.raises(ConfigError, match=r"key 'key' groups the ranks on hosts as \(gpu-a: ranks 0-1, gpu-b: rank 2\) "
                                          r"but hostfile .*hosts places them \(gpu-a: rank 0, gpu-b: ranks 1-2\)"):
        limits.check_devices(plan, cuda_devices=0)


def test_the_gpus_of_ranks_on_this_host_are_checked_against_its_own(tmp_path):
    plan = _gpu_plan(tmp_path, "localhost slots=2\ngpu-b slots=1\n", {"here": [1, 1], "gpu-b": [1]})
    assert limits.check_devices(plan, cuda_devices=2) == {0: "cuda:0", 1: "cuda:1", 2: "cuda:0"}
    with pytest.raises(ConfigError, match=r"rank 1 runs on this host \(localhost, by hostfile .*\) on GPU 1 of the "
                                          r"mapping; this host has 1 visible GPU\(s\): set device_args.using_gpu: false"):
        limits.check_devices(plan, cuda_devices=1)


@pytest.mark.parametrize("config", ["simulation_sp", "cross_silo_grpc"])
def test_a_hostfile_is_for_backend_mpi_only(config, tmp_path):
    path = hostfile(tmp_path, "a slots=8\n")
    with pytest.raises(ConfigError, match=r"comm_args\.mpi_hostfile=.* is not allowed: expected no key, or with "
                                          r"backend MPI"):
        launcher.plan_run(CONFIG_DIR / f"{config}.yaml", hostfile=str(path))


@pytest.mark.parametrize("args, message", [
    (["--hostfile", "missing-hosts"], "missing-hosts: no such file"),
    (["--hostfile", "bad", "--set", "client_num_per_round=3"], "line 1: 'a': expected 'HOST slots=N'"),
])
def test_fedpft_run_hostfile_errors_exit_2_before_anything_starts(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    hostfile(tmp_path, "a\n", "bad")
    code = cli.main(["run", "--cf", str(CONFIG_DIR / "simulation_mpi.yaml"), "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("fedpft: error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_fedpft_run_check_prints_the_placement_and_the_mpirun_command(minilm_2layer, tmp_path, capsys):
    path = hostfile(tmp_path, "server-host slots=1\nsilo slots=2\n")
    out = tmp_path / "run"
    code = cli.main(["run", "--cf", str(CONFIG_DIR / "simulation_mpi.yaml"), "--check", "--out", str(out),
                     "--hostfile", str(path), "--set", f"model={minilm_2layer}", "fedpft_retained_layers=[0]",
                     "fedpft_public_size=80", "max_train_examples=64", "max_test_examples=32"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and not out.exists()
    rows = {line.split()[0]: line.split(None, 1)[1] for line in lines[1:]}
    assert rows["hosts"] == f"server-host: server rank 0; silo: client ranks 1-2 (by slot, from {path})"
    mpirun = rows["mpirun"].split()
    assert mpirun[1:10] == ["--hostfile", str(path), "--map-by", "slot", "--bind-to", "none", "-np", "3", "-x"]
    assert {"FEDPFT_RUN_DIR", "HOME", "OMP_NUM_THREADS"} <= {mpirun[i + 1] for i, a in enumerate(mpirun) if a == "-x"}
    assert mpirun[-4:] == ["-m", "fedpft_algo.participant", "--cf", str(out / "config.yaml")]


# ====================================================================== real mpirun on this host's slots
def _mpi_env() -> dict:
    env = dict(os.environ)
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


@pytest.mark.process
def test_open_mpi_maps_the_ranks_as_the_plan_says(tmp_path):
    """``mpirun --display map`` with the launcher's own options: the slots given, by slot, no oversubscription."""
    path = hostfile(tmp_path, "localhost slots=3\n")
    plan = launcher.plan_run(CONFIG_DIR / "simulation_mpi.yaml", hostfile=str(path))
    command = plan.mpirun_command({}) + ["--display", "map", "hostname"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=_mpi_env())
    assert done.returncode == 0, done.stderr
    assert "Mapping policy: BYSLOT:NOOVERSUBSCRIBE" in done.stdout and "Binding policy: NONE" in done.stdout
    assert "Num slots: 3\tSlots in use: 3" in done.stdout
    # one slot short: Open MPI refuses too, so the pre-flight check and mpirun agree
    short = subprocess.run([*command[:8], "4", *command[9:]], capture_output=True, text=True, timeout=60,
                           env=_mpi_env())
    assert short.returncode != 0 and "not enough slots" in (short.stdout + short.stderr).lower()


@pytest.mark.process
def test_launch_with_a_hostfile_runs_every_round(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", pythonpath())
    monkeypatch.setattr(processes, "PARTICIPANT_MODULE", "fake_participant")
    plan = launcher.plan_run(CONFIG_DIR / "simulation_mpi.yaml", ["comm_round=3"], cwd=tmp_path,
                             hostfile=str(hostfile(tmp_path, "localhost slots=3\n")))
    run_dir = tmp_path / "run"
    rounds = launcher.launch(plan, run_dir, timeout=60, round_timeout=20, progress=False)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    started = [json.loads(line) for line in RunDir(run_dir).processes_log.read_text().splitlines()]
    assert [s["command"][:3] for s in started] == [[plan.mpirun, "--hostfile", str(plan.hostfile)]]
    assert live_processes(started_pids(run_dir)) == []
