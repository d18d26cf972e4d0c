"""``fedpft run``: every bad input exits 2 with one line on stderr and leaves no run directory;
a run prints one line per round and writes its results; a failed or interrupted run exits 1.

Runs use ``tests/helpers/fake_participant.py`` (see launch/test_launcher.py); two tests start the real console
script / CLI in a subprocess (each pays the ~9 s ``import torch`` of ``fedpft_algo``).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fedpft_algo import cli
from fedpft_algo.config import read_config
from fedpft_algo.launch import processes
from fedpft_algo.rundir.layout import RunDir
from tests.helpers import pythonpath
from tests.helpers.fake_participant import live_processes, started_pids

TESTS_DIR = Path(__file__).resolve().parent
CONFIG_DIR = TESTS_DIR.parent / "fedml_config"
VENV_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", pythonpath())
    for name in ("FAKE_FAIL", "FAKE_HANG", "FAKE_IGNORE_TERM", "FAKE_EXIT_EARLY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(processes, "PARTICIPANT_MODULE", "fake_participant")
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def config_with(tmp_path: Path, base: str = "simulation_sp", **sections) -> Path:
    """A copy of a shipped config with ``section={key: value or DELETE}`` changes, in tmp_path."""
    config = yaml.safe_load((CONFIG_DIR / f"{base}.yaml").read_text())
    for section, changes in sections.items():
        if not isinstance(changes, dict):
            config[section] = changes
            continue
        for key, value in changes.items():
            if value is DELETE:
                config[section].pop(key)
            else:
                config.setdefault(section, {})[key] = value
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


DELETE = object()


def run_cli(capsys, *argv):
    code = cli.main(["run", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


# ====================================================================== input errors: exit 2, one line, nothing left
def _bad_yaml(tmp_path, text):
    (tmp_path / "job.yaml").write_text(text)
    return tmp_path / "job.yaml"


def _address_file(tmp_path, text):
    (tmp_path / "ip.csv").write_text(text)
    return config_with(tmp_path, "cross_silo_grpc", comm_args={"grpc_ipconfig_path": str(tmp_path / "ip.csv")})


BAD_INPUTS = {  # id -> (make the config file, extra CLI args, what stderr must say)
    "missing file": (lambda t: t / "nope.yaml", [], r"config file .*nope\.yaml does not exist"),
    "not yaml": (lambda t: _bad_yaml(t, "train_args: [1,\n"), [], r"job\.yaml is not valid YAML at line \d"),
    "not a mapping": (lambda t: _bad_yaml(t, "- 1\n- 2\n"), [], r"must be a mapping of sections.*got list"),
    "empty section": (lambda t: config_with(t, validation_args=None), [],
                      r"section 'validation_args' is empty \(FedML cannot parse an empty section\)"),
    "section not a mapping": (lambda t: config_with(t, model_args="minilm"), [],
                              r"section 'model_args' must be a mapping of keys, got str"),
    "training_type": (lambda t: config_with(t, common_args={"training_type": "cross_device"}), [],
                      r"common_args\.training_type='cross_device' is not allowed: expected one of simulation, "
                      r"cross_silo"),
    "training_type missing": (lambda t: config_with(t, common_args={"training_type": DELETE}), [],
                              r"common_args\.training_type is missing: expected one of simulation, cross_silo"),
    "backend simulation": (lambda t: config_with(t, comm_args={"backend": "GRPC"}), [],
                           r"comm_args\.backend='GRPC' is not allowed: expected one of sp, MPI for training_type "
                           r"simulation"),
    "backend cross_silo": (lambda t: config_with(t, "cross_silo_mpi", comm_args={"backend": "sp"}), [],
                           r"comm_args\.backend='sp' .*expected one of MPI, GRPC for training_type cross_silo"),
    "per_round > total": (lambda t: config_with(t, train_args={"client_num_per_round": 11}), [],
                          r"train_args\.client_num_per_round=11 .*expected at most client_num_in_total \(4\)"),
    "per_round 0": (lambda t: config_with(t), ["--set", "client_num_per_round=0"],
                    r"train_args\.client_num_per_round=0 is not allowed: expected an integer >= 1"),
    "comm_round 0": (lambda t: config_with(t), ["--set", "comm_round=0"], r"train_args\.comm_round=0 .*>= 1"),
    "comm_round text": (lambda t: config_with(t, train_args={"comm_round": "3"}), [],
                        r"train_args\.comm_round='3' is not allowed: expected an integer >= 1"),
    "optimizer": (lambda t: config_with(t, train_args={"federated_optimizer": "FedProx"}), [],
                  r"train_args\.federated_optimizer='FedProx' .*expected FedAvg"),
    "fedpft unknown key": (lambda t: config_with(t), ["--set", "fedpft_lora_rank=4"],
                           r"unknown config key 'fedpft_lora_rank'; did you mean fedpft_lora_r\?"),
    "fedpft bad value": (lambda t: config_with(t, fedpft_args={"fedpft_lora_r": 0}), [],
                         r"fedpft_lora_r=0 is not allowed: expected an integer >= 1"),
    "set unknown key": (lambda t: config_with(t), ["--set", "learning_rat=0.1"],
                        r"--set learning_rat: no section of the config has this key; did you mean learning_rate\?"),
    "set malformed": (lambda t: config_with(t), ["--set", "comm_round"], r"--set 'comm_round': expected KEY=VALUE"),
    "scenario": (lambda t: config_with(t, "cross_silo_mpi", common_args={"scenario": "hierarchical"}), [],
                 r"common_args\.scenario='hierarchical' .*expected horizontal"),
    "client_id_list": (lambda t: config_with(t, "cross_silo_mpi", train_args={"client_id_list": "[1, 3]"}), [],
                       r"train_args\.client_id_list='\[1, 3\]' .*expected \[1, 2\]"),
    "address header": (lambda t: _address_file(t, "rank,ip,port\n"), [],
                       r"GRPC address file .*ip\.csv line 1: expected the header eid,rank,grpc_server_ip,"
                       r"grpc_server_port"),
    "address rank": (lambda t: _address_file(t, "eid,rank,grpc_server_ip,grpc_server_port\n0,0,127.0.0.1,9000\n"), [],
                     r"ip\.csv: no row for rank\(s\) \[1, 2\]"),
    "address port": (lambda t: _address_file(t, "eid,rank,grpc_server_ip,grpc_server_port\n0,0,127.0.0.1,0\n"), [],
                     r"ip\.csv line 2: '0,0,127.0.0.1,0' is not allowed"),
    "resume not a run dir": (lambda t: ["--resume", t / "nowhere"], [],
                             r"--resume .*nowhere: not a fedpft run directory \(it has no config\.yaml\)"),
    "resume no checkpoint": (lambda t: _stopped_run(t, checkpointed=False), [], r"--resume .*: no checkpoint in "),
    "resume other config": (lambda t: _stopped_run(t, fingerprint="0123456789abcdef"), [],
                            r"checkpoint round-0001\.json was written by another config than .*config\.yaml"),
    "resume finished": (lambda t: _stopped_run(t, rounds_done=8), [], r"the run already finished all 8 rounds"),
    "resume with --set": (lambda t: _stopped_run(t), ["--set", "comm_round=9"],
                          r"--resume RUN_DIR takes the run's own config: drop --cf, --set, --out and --hostfile"),
    "neither --cf nor --resume": (lambda t: [], [], r"fedpft run needs --cf FILE \(a FedML yaml\) or --resume"),
    "data file missing": (lambda t: config_with(t, data_args={"dataset": str(t / "reviews.csv")}), [],
                          r"data file or directory not found: .*reviews\.csv"),
    "data column missing": (lambda t: _data(t, "text,label\n" + "good film,1\nbad film,0\n" * 40,
                                            fedpft_label_column="verdict"),
                            [], r"reviews\.csv: column 'verdict' not found; columns present"),
    "data empty": (lambda t: _data(t, "text,label\n"), [], r"reviews\.csv: no examples"),
    "data labels outside": (lambda t: _data(t, "text,label\n" + "good film,pos\nbad film,neg\n" * 40,
                                            test="text,label\nodd film,meh\n"),
                            [], r"test labels \['meh'\] are outside the label set"),
    "data not utf-8": (lambda t: _data(t, b"text,label\n\xff\xfe bad bytes,1\n"), [],
                       r"reviews\.csv is not UTF-8 text"),
    "data too few per client": (lambda t: config_with(t, data_args={"max_train_examples": 30}), [],
                                r"4 clients x min_per_client 10 > 30 training examples"),
    "model dir missing": (lambda t: config_with(t, model_args={"model": str(t / "my-model")}), [],
                          r"model directory .*my-model' does not exist"),
    "model architecture": (lambda t: _model_dir(t, {"model_type": "gpt2", "n_layer": 2}), [],
                           r"model_type 'gpt2' is not supported \(known: "),
    "retained layer out of range": (lambda t: config_with(t, fedpft_args={"fedpft_retained_layers": [0, 6]}), [],
                                    r"fedpft_retained_layers=\[0, 6\] .*layer indices in \[-6, 5\] for this "
                                    r"6-layer model"),
    "every layer retained": (lambda t: config_with(t, fedpft_args={"fedpft_retained_layers": [0, 1, 2, 3, 4, 5]}),
                             [], r"fedpft_retained_layers=\[0, 1, 2, 3, 4, 5\] is not allowed: expected fewer "
                                 r"than all 6 layers"),
    "timeout": (lambda t: config_with(t), ["--timeout", "0"], r"--timeout 0: expected a number of seconds > 0"),
    "round timeout": (lambda t: config_with(t), ["--round-timeout", "-1"], r"--round-timeout -1: expected"),
}


def _data(tmp_path, train, test=None, **fedpft_args):
    """A user's CSV data set: ``reviews.csv``, or with ``test`` a directory with train.csv and test.csv."""
    if test is None:
        path = dataset = tmp_path / "reviews.csv"
    else:
        dataset = tmp_path / "reviews"
        dataset.mkdir()
        (dataset / "test.csv").write_text(test)
        path = dataset / "train.csv"
    path.write_bytes(train if isinstance(train, bytes) else train.encode())
    changes = {"data_args": {"dataset": str(dataset), "max_train_examples": None}}
    if fedpft_args:
        changes["fedpft_args"] = fedpft_args
    return config_with(tmp_path, **changes)


def _model_dir(tmp_path, config):
    (tmp_path / "my-model").mkdir()
    (tmp_path / "my-model" / "config.json").write_text(json.dumps(config))
    return config_with(tmp_path, model_args={"model": str(tmp_path / "my-model")})


def _stopped_run(tmp_path, *, checkpointed=True, fingerprint=None, rounds_done=1):
    """A run directory as a stopped ``fedpft run`` leaves it (config.yaml, maybe a checkpoint)."""
    import torch

    from fedpft_algo.rundir import checkpoint

    run_dir = tmp_path / "stopped"
    run_dir.mkdir()
    config = read_config(config_with(tmp_path))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    if checkpointed:
        checkpoint.save(run_dir, rounds_done, {"w": torch.zeros(1)},
                        {"config_fingerprint": fingerprint or checkpoint.config_fingerprint(config), "history": []})
    return ["--resume", run_dir]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_run_bad_input_exits_2_with_one_line_and_no_run_dir(case, fake, tmp_path, capsys):
    make, extra, message = BAD_INPUTS[case]
    made = make(tmp_path)
    code, out, err = run_cli(capsys, *(made if isinstance(made, list) else ["--cf", made]), *extra)
    assert code == 2
    assert err.startswith("fedpft: error: ") and err.count("\n") == 1, err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "runs").exists() and out == ""
    if isinstance(made, list) and made:  # a refused --resume changes nothing in the run directory
        assert not RunDir(tmp_path / "stopped").resume_config.exists()


def test_run_port_in_use_exits_2(fake, tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ip = _address_file(tmp_path, "eid,rank,grpc_server_ip,grpc_server_port\n"
                                     f"0,0,127.0.0.1,{port}\n1,1,127.0.0.1,{port + 1}\n2,2,127.0.0.1,{port + 2}\n")
        code, _, err = run_cli(capsys, "--cf", ip, "--out", tmp_path / "out")
    assert code == 2
    assert f"rank 0: port in use: 127.0.0.1:{port}" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_run_refuses_a_non_empty_out_dir(fake, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "--cf", config_with(tmp_path), "--out", tmp_path / "out")
    assert code == 2 and "the directory exists and is not empty" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


# ====================================================================== runs
@pytest.mark.process
def test_run_prints_rounds_and_writes_results(fake, tmp_path, capsys):
    code, out, err = run_cli(capsys, "--cf", config_with(tmp_path), "--set", "comm_round=3")
    assert code == 0, err
    lines = out.splitlines()
    assert [ln.split("  ")[0] for ln in lines if ln.startswith("round ")] == ["round 1/3", "round 2/3", "round 3/3"]
    assert "round 2/3  acc 0.600  sub_acc 0.550  loss 0.5  up 1.2 MB  0.1 s  (neuron-level alignment)" in lines
    run_dir = Path(lines[-1])
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("job-")   # runs/<yaml stem>-<time>
    assert len(json.loads((run_dir / "metrics.json").read_text())) == 3
    assert (run_dir / "metrics.csv").read_text().startswith("round,accuracy,sub_accuracy,loss,upload_bytes,")
    assert (run_dir / "accuracy.png").stat().st_size > 0
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train_args"]["comm_round"] == 3


@pytest.mark.process
def test_run_failure_exits_1_naming_the_participant(fake, tmp_path, capsys):
    fake.setenv("FAKE_FAIL", "1:2")
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "--cf", config_with(tmp_path, "simulation_mpi"), "--out", out_dir,
                             "--set", "comm_round=4")
    assert code == 1
    assert err.splitlines()[0] == ("fedpft: run failed: client rank 1 failed in round 3: "
                                   "FakeError: injected failure of rank 1 in round index 2")
    assert "round 2/4" in out and "round 3/4" not in out
    assert (out_dir / "logs" / "mpirun.log").exists()       # the run dir stays, for its logs
    assert not (out_dir / "metrics.csv").exists()
    assert live_processes(started_pids(out_dir)) == []


# ====================================================================== the real command in a subprocess
@pytest.mark.process
def test_console_script_reports_input_errors_on_one_line(tmp_path):
    result = subprocess.run([str(VENV_BIN / "fedpft"), "run", "--cf", "nope.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == f"fedpft: error: config file {tmp_path / 'nope.yaml'} does not exist\n"
    assert not (tmp_path / "runs").exists()


@pytest.mark.process
def test_ctrl_c_stops_every_participant_and_exits_1(tmp_path):
    code = ("import sys; import fedpft_algo.launch.processes as p; p.PARTICIPANT_MODULE = 'fake_participant'; "
            "from fedpft_algo.cli import main; sys.exit(main())")
    env = dict(os.environ, PYTHONPATH=pythonpath(), FAKE_HANG="1:1")
    out_dir = tmp_path / "out"
    # a shell that started the tests in the background ignores SIGINT, and a child inherits that: give the
    # CLI the default SIGINT disposition, as a terminal would (Python then turns it into KeyboardInterrupt)
    proc = subprocess.Popen([sys.executable, "-c", code, "run", "--cf", str(CONFIG_DIR / "simulation_mpi.yaml"),
                             "--out", str(out_dir), "--set", "comm_round=3"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not (out_dir / "metrics.jsonl").exists():   # round 1 done, rank 1 now hangs
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert err.splitlines()[-2].startswith("fedpft: run failed: interrupted after ")
    assert live_processes(started_pids(out_dir)) == []
