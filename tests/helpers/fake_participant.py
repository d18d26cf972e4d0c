"""A stand-in for ``fedpft_algo.participant`` that speaks the launcher's contract in ~0.1 s per round.

Run as ``python -m fake_participant --cf config.yaml [--rank R --role server|client]`` (the launcher's
command line; under MPI the rank comes from mpi4py). Imports neither torch nor FedML.

Participants move in lockstep through files, like FedML's server and clients through messages:
a client trains round r (0-based, like FedML's round_idx) once the server has written r metrics lines;
the server writes round r's line once every client has reported round r trained (extra status key
``trained``, the number of rounds trained).
Under ``sp`` the one process plays the server and simulates its clients. Environment switches:

* ``FAKE_FAIL=RANK:ROUND`` - that rank writes a "failed" status and exits 1 (MPI: aborts the job).
* ``FAKE_HANG=RANK[:ROUND]`` - that rank stops forever in ROUND (default 1).
* ``FAKE_KILL=RANK:ROUND`` - that rank is killed by SIGKILL in ROUND (no status, no message: ``kill -9``).
* ``FAKE_IGNORE_TERM=1`` - every participant ignores SIGTERM (the launcher must SIGKILL).
* ``FAKE_EXIT_EARLY=RANK`` - that rank exits 3 before writing any status (and before listening).
"""
import argparse
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import yaml

ROUND_SECONDS = 0.1
GIVE_UP_SECONDS = 120   # a fake never outlives a broken test by much


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cf", required=True)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--role", default="client")
    args = parser.parse_args()
    flat = {k: v for section in yaml.safe_load(open(args.cf)).values() for k, v in section.items()}
    comm = None
    if flat["backend"] == "MPI":
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        args.rank = comm.Get_rank()
    if flat["backend"] == "sp":
        args.rank = 0
    role = "server" if args.rank == 0 else "client"
    run_dir = Path(os.environ["FEDPFT_RUN_DIR"])
    assert Path.cwd() == run_dir and os.environ["HOME"] == str(run_dir / "home"), "launcher contract"
    if os.environ.get("FAKE_EXIT_EARLY") == str(args.rank):
        print(f"ImportError: rank {args.rank} exits before its first status", flush=True)
        return 3
    if os.environ.get("FAKE_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    listener = None
    if flat["backend"] == "GRPC":   # like FedML, every GRPC participant listens on its own row's port
        rows = {int(r["rank"]): r for r in _csv_rows(flat["grpc_ipconfig_path"])}
        listener = socket.socket()
        listener.bind((rows[args.rank]["grpc_server_ip"], int(rows[args.rank]["grpc_server_port"])))
        listener.listen()

    def status(round_, phase, error=None, trained=None):
        tmp = run_dir / "status" / f".{role}_{args.rank}.tmp"
        tmp.write_text(json.dumps({"role": role, "rank": args.rank, "round": round_, "phase": phase,
                                   "pid": os.getpid(), "error": error, "trained": trained}))
        tmp.replace(run_dir / "status" / f"{role}_{args.rank}.json")

    fail = os.environ.get("FAKE_FAIL", "")
    hang = os.environ.get("FAKE_HANG", "")
    hang_rank, _, hang_round = hang.partition(":")
    n, rounds = flat["client_num_per_round"], flat["comm_round"]
    status(0, "started")
    for r in range(rounds):
        status(r, "training", trained=r)
        if role == "client":
            _wait(lambda: _metric_lines(run_dir) >= r)   # the server's model of round r
        if fail == f"{args.rank}:{r}":
            status(r, "failed", f"FakeError: injected failure of rank {args.rank} in round index {r}")
            print(f"Traceback ...\nFakeError: injected failure of rank {args.rank} in round index {r}", flush=True)
            if comm is not None:
                comm.Abort(1)
            return 1
        if os.environ.get("FAKE_KILL") == f"{args.rank}:{r}":
            os.kill(os.getpid(), signal.SIGKILL)
        if hang and int(hang_rank) == args.rank and r == int(hang_round or 1):
            print(f"rank {args.rank} hangs in round index {r}", flush=True)
            time.sleep(3600)
        if role == "client":
            time.sleep(ROUND_SECONDS)
            status(r, "training", trained=r + 1)
        else:
            if flat["backend"] != "sp":   # FedML's server waits for every client's upload
                _wait(lambda: all((_status(run_dir, k).get("trained") or 0) > r for k in range(1, n + 1)))
            time.sleep(ROUND_SECONDS)
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"round": r, "accuracy": 0.55 + 0.05 * r, "sub_accuracy": 0.5 + 0.05 * r,
                                    "loss": 1.0 / (r + 1), "upload_bytes": 1_200_000, "download_bytes": 2_400_000,
                                    "round_seconds": ROUND_SECONDS, "align": r % 2 == 1}) + "\n")
    if role == "server":
        (run_dir / "final").mkdir(exist_ok=True)
        (run_dir / "final" / "trainable.safetensors").write_bytes(b"fake")
    status(rounds - 1, "done", trained=rounds)
    if comm is not None:
        comm.Barrier()
    if listener is not None:
        listener.close()
    return 0


def _csv_rows(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _metric_lines(run_dir: Path) -> int:
    try:
        return sum(1 for line in open(run_dir / "metrics.jsonl") if line.endswith("\n"))
    except FileNotFoundError:
        return 0


def _status(run_dir: Path, rank: int) -> dict:
    try:
        return json.loads((run_dir / "status" / f"client_{rank}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _wait(condition) -> None:
    end = time.time() + GIVE_UP_SECONDS
    while not condition():
        if time.time() > end:
            sys.exit("fake participant: gave up waiting")
        time.sleep(0.02)


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------------- helpers for the tests that use this fake
def started_pids(run_dir) -> list:
    """Every pid a run started or reported: the launcher's sessions and the participants' own pids."""
    run_dir = Path(run_dir)
    pids = []
    log = run_dir / "logs" / "processes.jsonl"
    if log.exists():
        pids += [json.loads(line)["pid"] for line in log.read_text().splitlines()]
    for status in (run_dir / "status").glob("*.json"):
        pids.append(json.loads(status.read_text())["pid"])
    return pids


def live_processes(pids) -> list:
    """The pids (zombies included) that still exist, or exist in one of the sessions ``pids`` lead."""
    from fedpft_algo.launch.processes import session_pids

    return sorted({pid for pid in pids if Path(f"/proc/{pid}").exists()} | set(session_pids(pids, zombies=True)))
