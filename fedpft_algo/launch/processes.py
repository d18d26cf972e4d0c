"""Starting the participants' processes, and stopping every one of them.

Each participant is started in a session of its own; stopping a run signals every process of
those sessions (Open MPI gives each rank its own process group, but they stay in mpirun's
session), found by session id in ``/proc``: only processes this launcher started.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..rundir.layout import RunDir

logger = logging.getLogger(__name__)

PARTICIPANT_MODULE = "fedpft_algo.participant"   # what ``fedpft run`` starts (looked up at each launch)


@dataclass
class Proc:
    role: str            # "server", "client" or "mpirun"
    rank: Optional[int]
    popen: subprocess.Popen
    log: Path

    @property
    def name(self) -> str:
        return self.role if self.rank is None else f"{self.role} rank {self.rank}"


def participant_env(run_dir: RunDir, parallel: int = 1) -> Dict[str, str]:
    """The participants' environment: the run directory, HOME inside it, one share of the cores each."""
    env = dict(os.environ)
    # The clients of a round train at the same time: share the cores among them instead of
    # starting one torch thread per core in each (the server, busy only while clients wait,
    # takes all cores again itself: see participant.run).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, parallel))))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_HOME", str(Path("~/.cache/huggingface").expanduser()))   # before HOME moves
    env.update(HOME=str(run_dir.home), PYTHONUNBUFFERED="1", **run_dir.env())
    if hasattr(os, "geteuid") and os.geteuid() == 0:   # Open MPI refuses root without these
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def start(role: str, rank: Optional[int], command: List[str], run_dir: RunDir, env: Dict[str, str]) -> Proc:
    """Start ``command`` in ``run_dir`` in a new session, output to its log; record its pid."""
    log = run_dir.log_file(f"{role}_{rank}" if rank is not None else role)
    with open(log, "ab") as out:
        popen = subprocess.Popen(command, cwd=run_dir.root, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    logger.info("started %s: pid %d: %s", role if rank is None else f"{role} {rank}", popen.pid, " ".join(command))
    with open(run_dir.processes_log, "a", encoding="utf-8") as f:
        f.write(json.dumps({"role": role, "rank": rank, "pid": popen.pid, "command": command}) + "\n")
    return Proc(role, rank, popen, log)


def session_pids(session_ids: Sequence[int], *, zombies: bool = False) -> List[int]:
    """Processes whose session id is one of ``session_ids`` (Linux ``/proc``); zombies only if asked."""
    wanted, found = set(session_ids), []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, session = fields[0], int(fields[3])
        if session in wanted and (zombies or state not in (b"Z", b"X")):
            found.append(int(entry))
    return found


def stop_all(procs: List[Proc], grace: float) -> None:
    """Stop every process of the sessions we started, within ``grace`` + 5 s.

    SIGTERM first to the process group of each process we started (mpirun then stops and reaps its
    ranks itself), after up to 3 s also to every other process left in those sessions (e.g. MPI
    ranks, which sit in process groups of their own), and SIGKILL what is left after ``grace`` s.
    """
    sessions = [p.popen.pid for p in procs]
    _stop_sessions(procs, sessions, grace)
    # Ranks of a killed mpirun are reparented to init as zombies; give init a moment to reap them
    # so that no trace of the run is left when this returns.
    end = time.monotonic() + 3.0
    while session_pids(sessions, zombies=True) and time.monotonic() < end:
        time.sleep(0.1)


def _stop_sessions(procs: List[Proc], sessions: List[int], grace: float) -> None:
    start_time = time.monotonic()
    steps = [(0.0, "groups", signal.SIGTERM), (min(3.0, grace), "all", signal.SIGTERM),
             (grace, "all", signal.SIGKILL)]
    for when, scope, sig in steps:
        while time.monotonic() - start_time < when:
            if _all_gone(procs, sessions):
                return
            time.sleep(0.1)
        if _all_gone(procs, sessions):
            return
        if sig == signal.SIGKILL:
            logger.warning("sending SIGKILL to the processes of %s that ignored SIGTERM", sessions)
        targets = [(os.killpg, p.popen.pid) for p in procs if p.popen.poll() is None] if scope == "groups" \
            else [(os.kill, pid) for pid in session_pids(sessions)]
        for kill, pid in targets:
            try:
                kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
    end = time.monotonic() + 5.0
    while time.monotonic() < end and not _all_gone(procs, sessions):
        time.sleep(0.1)


def _all_gone(procs: List[Proc], sessions: List[int]) -> bool:
    running = [p for p in procs if p.popen.poll() is None]   # poll() also reaps our own children
    return not running and not session_pids(sessions)


def raise_on_sigterm():
    """Treat SIGTERM to the launcher like Ctrl-C (stop the participants, then fail); returns an undo function."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_ignored():
    """Ctrl-C and SIGTERM ignored for the ``with`` block (a second Ctrl-C must not cut a clean-up short)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
