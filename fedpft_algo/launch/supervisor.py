"""Running a plan: start its participants, watch their rounds, stop them all; or fail, naming who and why.

FedML 0.9.6's own ``fedml run`` only talks to FedML's hosted platform. :func:`launch` does locally
what FedML's documentation does by hand, in one of three topologies chosen by the plan:

==============================  ==============================================================
simulation + ``sp``             one process (no mpirun)
simulation/cross_silo + ``MPI`` ``mpirun --oversubscribe -np N+1`` (rank 0 server, 1..N clients);
                                with a hostfile ``mpirun --hostfile FILE --map-by slot ...`` (:mod:`.hosts`)
cross_silo + ``GRPC``           one process per participant: the server first, clients once it listens
==============================  ==============================================================

N is ``client_num_per_round``. Each participant runs ``python -m <participant module> --cf
<run_dir>/config.yaml`` (GRPC adds ``--rank R --role server|client``) with the run directory as
working directory and the environment of :func:`processes.participant_env`. The supervisor
tails ``metrics.jsonl`` and the status files (:mod:`fedpft_algo.rundir.records`); what a finished
run must contain besides is its caller's to say (``expect``).

FedML has no timeouts and waits forever when a peer dies, so this monitor is what guarantees
that a run ends: on a failed participant, a timeout or Ctrl-C it stops every process it started.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from ..config import flatten
from ..files import write_text_atomic
from ..rundir.layout import RunDir
from ..rundir.records import MetricsTail, read_statuses
from . import processes
from .addresses import Address, write_address_file
from .plan import RunPlan, for_participants
from .processes import Proc
from ..rundir.results import format_round
from .progress import RunProgress

logger = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    """A run that started but did not finish: a participant failed, a timeout, or Ctrl-C."""


@dataclass
class _State:
    rounds: List[Dict[str, Any]] = field(default_factory=list)
    last_progress: Optional[float] = None   # set when the first round starts, then on each metrics line


def prepare_run_dir(plan: RunPlan, run_dir: RunDir) -> Path:
    """Create the run directory's folders and write the participants' config (and the GRPC address file)."""
    for folder in (run_dir.logs, run_dir.status_dir, run_dir.home):
        folder.mkdir(parents=True, exist_ok=True)
    if plan.addresses is not None:
        write_address_file(run_dir.addresses, plan.addresses)
    path = run_dir.resume_config if plan.resume_round else run_dir.config
    path.write_text(yaml.safe_dump(for_participants(plan, run_dir), sort_keys=False), encoding="utf-8")
    return path


def restart_records(run_dir: RunDir, checkpoint_path: os.PathLike) -> None:
    """Before a resumed run starts: metrics of the checkpoint's rounds only; no stale status files."""
    from ..rundir import checkpoint

    history = checkpoint.read(Path(checkpoint_path)).meta["history"]
    write_text_atomic(run_dir.metrics_jsonl, "".join(json.dumps(row) + "\n" for row in history))
    for status in run_dir.status_dir.glob("*.json"):
        status.unlink()


def launch(plan: RunPlan, run_dir: os.PathLike, *, expect: Sequence[str] = (), timeout: float = 3600.0,
           round_timeout: float = 900.0, participant_module: Optional[str] = None, kill_grace: float = 10.0,
           progress: bool = True, stop: Optional[threading.Event] = None) -> List[Dict[str, Any]]:
    """Run ``plan`` in ``run_dir`` (which must exist) and return the per-round metrics.

    ``expect``: files (relative to the run directory, e.g. :attr:`RunDir.FINAL_WEIGHTS`) that a
    finished run must contain. ``timeout`` bounds the whole run; ``round_timeout`` bounds the time
    without a new metrics line once the first round has started, and the wait for the GRPC server
    to listen. ``participant_module`` (default :data:`processes.PARTICIPANT_MODULE`, looked up at
    call time) is the module each process runs; ``kill_grace`` (seconds between SIGTERM and SIGKILL)
    exists for tests. ``stop``, when set by another thread (the bench runs cells side by side),
    ends the run as Ctrl-C does. Raises :class:`RunFailed`; every started process is stopped
    before this returns or raises.
    """
    run_dir = RunDir(Path(run_dir).resolve())
    config_path = prepare_run_dir(plan, run_dir)
    if plan.resume_round:
        restart_records(run_dir, flatten(plan.config)["resume_checkpoint"])
    module = participant_module or processes.PARTICIPANT_MODULE
    command = [sys.executable, "-m", module, "--cf", str(config_path)]
    procs: List[Proc] = []
    state = _State()
    started = time.monotonic()
    deadline = started + timeout
    restore = processes.raise_on_sigterm()
    bar = RunProgress(run_dir.root, plan.comm_round, enabled=progress)   # the server's phases, then the rounds
    try:
        _say(f"fedpft: {plan.training_type}/{plan.backend} run with {plan.num_processes} process(es) "
             f"in {run_dir.root} (logs in {run_dir.logs})", progress)
        _start_participants(plan, command, run_dir, procs, min(deadline, time.monotonic() + round_timeout),
                            round_timeout)
        _monitor(plan, procs, run_dir, state, deadline, timeout, round_timeout, bar, progress, stop)
        _check_complete(plan, state.rounds, run_dir, expect)
        return state.rounds
    except KeyboardInterrupt:
        raise RunFailed(f"interrupted after {time.monotonic() - started:.0f} s; stopped every participant; "
                        f"{_progress_summary(plan, state, run_dir)}") from None
    finally:
        bar.close()
        with processes.signals_ignored():   # a second Ctrl-C must not cut the clean-up short
            processes.stop_all(procs, kill_grace)
        restore()


def _start_participants(plan: RunPlan, command: List[str], run_dir: RunDir, procs: List[Proc],
                        listen_deadline: float, round_timeout: float) -> None:
    """Start the plan's processes into ``procs`` (so that a failure part-way still stops the started ones)."""
    env = processes.participant_env(run_dir, plan.num_clients if plan.num_processes > 1 else 1)
    if plan.backend == "sp":
        procs.append(processes.start("server", 0, command, run_dir, env))   # it also plays every client
    elif plan.backend == "MPI":
        procs.append(processes.start("mpirun", None, plan.mpirun_command(env) + command, run_dir, env))
    else:
        procs.append(processes.start("server", 0, command + ["--rank", "0", "--role", "server"], run_dir, env))
        _wait_listening(procs[0], plan.addresses[0], run_dir, listen_deadline, round_timeout)
        for rank in range(1, plan.num_clients + 1):
            args = ["--rank", str(rank), "--role", "client"]
            procs.append(processes.start("client", rank, command + args, run_dir, env))


def _monitor(plan, procs, run_dir, state, deadline, timeout, round_timeout, bar, progress, stop=None) -> None:
    tail = MetricsTail(run_dir.metrics_jsonl)

    def read_metrics() -> None:
        for record in tail.read_new():
            state.rounds.append(record)
            state.last_progress = time.monotonic()
            bar.update(1)
            _say(format_round(record, len(state.rounds), plan.comm_round), progress)

    while True:
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        read_metrics()
        if bar.poll() and state.last_progress is not None:
            state.last_progress = time.monotonic()   # the server reported a step (e.g. of its alignment)
        if state.last_progress is None and any(s.get("phase") in ("training", "done")
                                               for s in read_statuses(run_dir).values()):
            state.last_progress = time.monotonic()
        failed = next((p for p in procs if p.popen.poll() not in (None, 0)), None)
        if failed is not None:
            read_metrics()   # rounds finished before the failure, for the record
            raise RunFailed(describe_failure(failed, run_dir))
        if all(p.popen.poll() == 0 for p in procs):
            read_metrics()   # lines written just before the server exited
            return
        now = time.monotonic()
        if now > deadline:
            raise RunFailed(f"timeout: the run took longer than --timeout {timeout:g} s; "
                            f"{_progress_summary(plan, state, run_dir)}")
        if state.last_progress is not None and now - state.last_progress > round_timeout:
            raise RunFailed(f"round timeout: no round finished within --round-timeout {round_timeout:g} s; "
                            f"{_progress_summary(plan, state, run_dir)}")
        time.sleep(0.5)


def _check_complete(plan: RunPlan, rounds: List[Dict[str, Any]], run_dir: RunDir, expect: Sequence[str]) -> None:
    if not rounds:
        raise RunFailed(f"every participant exited 0 but the server wrote no {RunDir.METRICS_JSONL} line")
    if len(rounds) != plan.comm_round:
        logger.warning("%s has %d rounds, comm_round is %d", run_dir.metrics_jsonl, len(rounds), plan.comm_round)
    missing = [name for name in expect if not (run_dir.root / name).exists()]
    if missing:
        raise RunFailed(f"every participant exited 0 but the run directory has no {', '.join(missing)}")


def _wait_listening(server: Proc, address: Address, run_dir: RunDir, deadline: float, limit: float) -> None:
    host = "127.0.0.1" if address.ip in ("0.0.0.0", "") else address.ip
    while True:
        if server.popen.poll() is not None:
            raise RunFailed(describe_failure(server, run_dir) if server.popen.returncode
                            else f"server rank 0 exited before listening on {host}:{address.port}")
        try:
            with socket.create_connection((host, address.port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RunFailed(f"server rank 0 did not listen on {host}:{address.port} within {limit:g} s "
                            f"(--round-timeout / --timeout): {_last_line(server.log)}")
        time.sleep(0.25)


# ---------------------------------------------------------------------- messages
def describe_failure(proc: Proc, run_dir: RunDir) -> str:
    """``<role> rank <r> failed in round <k>: <error>`` for the participant that failed.

    A status file in phase "failed" names it (under MPI the only process is mpirun); otherwise the
    exited process itself, with the last line of its log as the error.
    """
    statuses = read_statuses(run_dir)
    failed = [s for s in statuses.values() if s.get("phase") == "failed"]
    if proc.rank is not None:
        own = statuses.get(f"{proc.role}_{proc.rank}")
        failed = [own] if own and own.get("phase") == "failed" else failed
    if failed:
        status = failed[0]
        log = run_dir.log_file(f"{status.get('role')}_{status.get('rank')}")
        error = status.get("error") or _last_line(log if log.exists() else proc.log)
        return f"{status.get('role')} rank {status.get('rank')} failed in round {_human(status)}: {error}"
    status = statuses.get(f"{proc.role}_{proc.rank}", {}) if proc.rank is not None else {}
    name = proc.name
    code = proc.popen.returncode
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    detail = _last_line(proc.log)
    killed = _MPI_KILLED.search(_tail_text(proc.log)) if proc.rank is None else None
    if killed:  # mpirun names the rank a signal took down (kill -9, out of memory)
        rank = int(killed.group(1))
        name = f"{'server' if rank == 0 else 'client'} rank {rank}"
        status = statuses.get(name.replace(" rank ", "_"), {})
        how = f"was killed by signal {killed.group(2)}"
        detail = "mpirun " + " ".join(killed.group(0).split())
    when = f"in round {_human(status)}" if "round" in status else "before reporting a round"
    return f"{name} failed {when} ({how}): {detail}"


_MPI_KILLED = re.compile(r"noticed that process rank (\d+) with PID \d+ on node \S+ exited on\s+signal (\d+)")


def _tail_text(log: Path, limit: int = 20000) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _progress_summary(plan: RunPlan, state: _State, run_dir: RunDir) -> str:
    waiting = [f"{s.get('role')} rank {s.get('rank')} (round {_human(s)}, {s.get('phase')})"
               for s in read_statuses(run_dir).values() if s.get("phase") != "done"]
    return (f"{len(state.rounds)} of {plan.comm_round} rounds finished; not done: "
            f"{', '.join(waiting) or 'no participant reported a status'}")


def _human(status: Dict[str, Any]) -> Any:
    """A status's ``round`` (FedML's 0-based round_idx) as the 1-based number the progress lines show."""
    value = status.get("round")
    return value + 1 if isinstance(value, int) and not isinstance(value, bool) else value


def _last_line(log: Path, limit: int = 300) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:limit] if lines else f"(empty log {log.name})"


def _say(message: str, progress: bool) -> None:
    if progress:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stdout)
