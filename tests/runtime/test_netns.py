"""Cross-silo GRPC across separate network namespaces: the server and the clients are different
"hosts" (own network stack, own address, own run directory) joined by a veth link, as on a real
deployment where each participant is started on its own machine with
``python -m fedpft_algo.participant --cf job.yaml --rank R --role server|client``.

Needs root and ``ip netns`` (Linux); skipped with the reason otherwise.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from fedpft_algo import launch as launcher
from fedpft_algo.launch import processes
from fedpft_algo.launch.addresses import Address, write_address_file
from fedpft_algo.rundir.layout import RunDir
from tests.runtime.test_fedml_integration import CONFIG_DIR, small_run_overrides

pytestmark = [pytest.mark.netns, pytest.mark.process, pytest.mark.timeout(420)]
SERVER_IP, CLIENT_IP = "10.231.7.1", "10.231.7.2"


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def two_hosts():
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2's `ip netns` to build two network namespaces")
    tag = uuid.uuid4().hex[:6]
    server, client = f"fedpft-s-{tag}", f"fedpft-c-{tag}"
    try:
        _ip("netns", "add", server)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"`ip netns add` is not permitted here: {exc.stderr.strip()}")
    try:
        _ip("netns", "add", client)
        _ip("link", "add", f"vs-{tag}", "type", "veth", "peer", "name", f"vc-{tag}")
        for ns, dev, ip in ((server, f"vs-{tag}", SERVER_IP), (client, f"vc-{tag}", CLIENT_IP)):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield server, client
    finally:
        for ns in (server, client):
            _ip("netns", "del", ns, check=False)  # removes the veth pair with it


def _host_config(plan, host_dir: Path, addresses) -> Path:
    """The job yaml as one host holds it: its own copy, the address file of every rank, its own logs."""
    host_dir.mkdir(parents=True)
    config = yaml.safe_load(yaml.safe_dump(plan.config))
    write_address_file(host_dir / "grpc_ipconfig.csv", addresses)
    config["comm_args"]["grpc_ipconfig_path"] = str(host_dir / "grpc_ipconfig.csv")
    config.setdefault("tracking_args", {})["log_file_dir"] = str(host_dir / "logs")
    (host_dir / "logs").mkdir()
    path = host_dir / "job.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _start(ns, host_dir, config, rank, role, env):
    log = open(host_dir / "logs" / f"{role}_{rank}.log", "wb")
    command = ["ip", "netns", "exec", ns, sys.executable, "-m", processes.PARTICIPANT_MODULE, "--cf", str(config),
               "--rank", str(rank), "--role", role]
    return subprocess.Popen(command, cwd=host_dir, env=dict(env, FEDPFT_RUN_DIR=str(host_dir), HOME=str(host_dir)),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_cross_silo_grpc_between_two_network_namespaces(two_hosts, minilm_2layer, tmp_path):
    server_ns, client_ns = two_hosts
    plan = launcher.plan_run(CONFIG_DIR / "cross_silo_grpc.yaml", small_run_overrides(minilm_2layer, tmp_path / "c"))
    port = plan.addresses[0].port
    addresses = [Address(0, SERVER_IP, port), Address(1, CLIENT_IP, port + 1),
                 Address(2, CLIENT_IP, port + 2)]
    env = processes.participant_env(RunDir(tmp_path), 2)
    server_dir, client_dir = tmp_path / "server_host", tmp_path / "client_host"
    procs = []
    try:
        procs.append(_start(server_ns, server_dir, _host_config(plan, server_dir, addresses), 0, "server", env))
        deadline = time.monotonic() + 120
        log = server_dir / "logs" / "server_0.log"
        while f"Started gRPC server: {SERVER_IP}:{port}" not in log.read_text(errors="replace"):
            assert procs[0].poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not listen in time"
            time.sleep(0.25)
        # the server is reachable only on its own host's address: not from the client host's loopback
        probe = subprocess.run(["ip", "netns", "exec", client_ns, sys.executable, "-c",
                                f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"],
                               capture_output=True, text=True)
        assert probe.returncode != 0
        client_config = _host_config(plan, client_dir, addresses)
        procs += [_start(client_ns, client_dir, client_config, rank, "client", env) for rank in (1, 2)]
        for proc in procs:
            assert proc.wait(timeout=300) == 0, [p.read_text()[-2000:] for p in (server_dir / "logs").glob("*.log")]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert processes.session_pids([p.pid for p in procs]) == []
    metrics = [json.loads(line) for line in (server_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in metrics] == [0, 1] and all(row["upload_bytes"] > 0 for row in metrics)
    received = [json.loads(line) for line in (client_dir / "events" / "client_1.jsonl").read_text().splitlines()
                if '"set_model_params"' in line]
    assert len(received) >= 2  # the sub-FM, then the round-1 aggregate, arrived over the veth link
    assert not (client_dir / "metrics.jsonl").exists()  # the client host holds no server state
