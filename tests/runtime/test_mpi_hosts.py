"""``fedpft run --hostfile`` across two hosts: Open MPI places rank 0 (server) on one network namespace and the
clients on another, started by a launch agent in place of ssh, and the FedPFT run passes its messages
over the veth link between them.

Each namespace is a "host": its own network stack and address, its own host name (``unshare --uts``) and
``/etc/hosts`` (``ip netns exec`` mounts ``/etc/netns/<ns>/hosts`` over it). The agent,
``--prtemca plm_ssh_agent``, is what ssh is on a cluster: ``agent HOST COMMAND`` runs COMMAND on HOST,
here with ``ip netns exec`` and the environment of a non-interactive ssh login (``env -i`` then PATH, HOME,
USER, LOGNAME, SHELL; Open MPI's daemon crashes without HOME), so the remote ranks see only what mpirun
forwards (``-x``). The filesystem is shared, as the README asks
of a run directory across hosts. Needs root, ``ip netns`` and ``unshare``; skipped with the reason otherwise.
"""
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fedpft_algo.launch import processes
from tests.runtime.test_fedml_integration import CONFIG_DIR, small_run_overrides

pytestmark = [pytest.mark.netns, pytest.mark.process, pytest.mark.timeout(480)]
NET = "10.231.9"
HOSTS = {"fedpft-a": f"{NET}.1", "fedpft-b": f"{NET}.2"}   # host name -> address; the server's host first

AGENT = """#!/bin/sh
# Open MPI's launch agent in place of ssh: $1 is the host, the rest the command for its shell.
host=$1; shift
case "$host" in
{cases}
  *) echo "agent: unknown host $host" >&2; exit 255;;
esac
echo "$host $ns" >> "{log}"
exec env -i PATH=/usr/bin:/bin HOME={home} USER={user} LOGNAME={user} SHELL=/bin/sh ip netns exec "$ns" unshare --uts sh -c "hostname $host; $*"
"""


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def two_hosts(tmp_path):
    """{host name: namespace} for two namespaces joined by a veth link, and the launch agent's path."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("unshare")):
        pytest.skip("needs root, iproute2's `ip netns` and util-linux's `unshare` to build two hosts")
    tag = uuid.uuid4().hex[:6]
    names = {host: f"fedpft-{host[-1]}-{tag}" for host in HOSTS}
    made = []
    try:
        for ns in names.values():
            try:
                _ip("netns", "add", ns)
            except subprocess.CalledProcessError as exc:
                pytest.skip(f"`ip netns add` is not permitted here: {exc.stderr.strip()}")
            made.append(ns)
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True)
            (etc / "hosts").write_text("127.0.0.1 localhost\n" + "".join(f"{ip} {h}\n" for h, ip in HOSTS.items()))
        (a, ns_a), (b, ns_b) = names.items()
        _ip("link", "add", f"va-{tag}", "type", "veth", "peer", "name", f"vb-{tag}")
        for host, ns, dev in ((a, ns_a, f"va-{tag}"), (b, ns_b, f"vb-{tag}")):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{HOSTS[host]}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        agent = tmp_path / "agent.sh"
        cases = "\n".join(f"  {host}) ns={ns};;" for host, ns in names.items())
        user = pwd.getpwuid(os.getuid())
        agent.write_text(AGENT.format(cases=cases, log=tmp_path / "agent.log", home=user.pw_dir, user=user.pw_name))
        agent.chmod(0o755)
        yield names, agent
    finally:
        for ns in made:
            _ip("netns", "del", ns, check=False)   # removes the veth pair with it
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        with_etc = Path("/etc/netns")
        if with_etc.is_dir() and not any(with_etc.iterdir()):
            with_etc.rmdir()


def _processes_naming(text: str) -> list:
    """Live processes whose command line contains ``text`` (the agent's path is in every remote daemon's)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:
            pass
    return found


def test_fedpft_mpi_simulation_across_two_hosts(two_hosts, minilm_2layer, tmp_path):
    names, agent = two_hosts
    (server_host, server_ns), (client_host, _) = names.items()
    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"{server_host} slots=1\n{client_host} slots=2\n")
    out = tmp_path / "run"
    env = dict(os.environ, PRTE_MCA_plm_ssh_agent=str(agent), PRTE_MCA_oob_tcp_if_include=f"{NET}.0/24",
               OMPI_MCA_btl_tcp_if_include=f"{NET}.0/24")
    command = ["ip", "netns", "exec", server_ns, "unshare", "--uts", "sh", "-c", f'hostname {server_host}; exec "$@"',
               "sh", sys.executable, "-m", "fedpft_algo.cli", "run", "--cf", str(CONFIG_DIR / "simulation_mpi.yaml"),
               "--hostfile", str(hostfile), "--out", str(out), "--timeout", "360", "--round-timeout", "240"]
    for item in small_run_overrides(minilm_2layer, tmp_path / "cache"):
        command += ["--set", item]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in (out / "logs").glob("*.log")) \
        if (out / "logs").is_dir() else ""
    assert proc.returncode == 0, output[-3000:] + logs
    assert "finished 2 round(s)" in output
    # Open MPI placed rank 0 on the first host and both clients on the second, as the hostfile says
    statuses = {p.stem: json.loads(p.read_text()) for p in (out / "status").glob("*.json")}
    assert {name: s["host"] for name, s in statuses.items()} == {
        "server_0": server_host, "client_1": client_host, "client_2": client_host}
    assert {s["phase"] for s in statuses.values()} == {"done"}
    assert (tmp_path / "agent.log").read_text().split() == [client_host, names[client_host]]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in metrics] == [0, 1] and all(row["upload_bytes"] > 0 for row in metrics)
    started = [json.loads(line) for line in (out / "logs" / "processes.jsonl").read_text().splitlines()]
    assert started[0]["command"][1:3] == ["--hostfile", str(hostfile)]
    assert processes.session_pids([proc.pid]) == [] and _processes_naming(str(agent)) == []
