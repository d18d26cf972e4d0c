"""mpirun across hosts: Open MPI's hostfile read and checked before the run, rank placement, the command line.

``fedpft run --hostfile FILE`` (or ``comm_args.mpi_hostfile`` in the yaml) hands ``FILE`` to
``mpirun --hostfile`` for MPI simulation and cross-silo MPI. Each line of the file is
``HOST slots=N [max_slots=M]`` (``#`` starts a comment), one line per host: Open MPI 5 refuses a
host whose slot count is given twice. ``slots=`` is required: the launcher places the ranks before
anything starts.

Placement is Open MPI's by-slot mapping, made explicit with ``--map-by slot``: ranks fill the
first host's slots, then the next host's, in file order, so rank 0 (the server) runs on the first
host. With a hostfile, ``--oversubscribe`` is not passed: the hosts must hold ``N + 1`` slots.

Remote ranks get only the environment mpirun forwards: :data:`FORWARD` names what the participants
need (``-x NAME`` for each one set in the launcher's environment).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from ..errors import ConfigError

KEY = "mpi_hostfile"          # comm_args.mpi_hostfile
SECTION = "comm_args"
# The participants' environment that remote ranks need (processes.participant_env sets the first
# six); the others are forwarded when the launcher's environment has them.
FORWARD = ("FEDPFT_RUN_DIR", "HOME", "PYTHONUNBUFFERED", "OMP_NUM_THREADS", "HF_HUB_OFFLINE", "HF_HOME",
           "PYTHONPATH", "FEDPFT_CACHE", "FEDPFT_LOG_LEVEL", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
           "CUDA_VISIBLE_DEVICES", "OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM")
_HOST = re.compile(r"^(?:[A-Za-z0-9_.-]+@)?[A-Za-z0-9_.:-]+$")   # [user@]name, IPv4 or IPv6
_FIELD = re.compile(r"^(slots|max_slots|max-slots)=(\d+)$")


@dataclass(frozen=True)
class Host:
    name: str
    slots: int


def read_hostfile(path: Path) -> List[Host]:
    """The hosts of an Open MPI hostfile, in file order. Raises :class:`ConfigError`
    naming the file, the line and what is allowed."""
    where = f"{SECTION}.{KEY} {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file (an Open MPI hostfile: one 'HOST slots=N' per line)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot be read: {exc}") from None
    slots: Dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, *fields = line.split()
        found = {}
        for item in fields:
            match = _FIELD.match(item)
            if not match:
                raise ConfigError(f"{where} line {number}: {item!r} is not allowed: expected slots=N or max_slots=N "
                                  f"(line: {raw.strip()!r})")
            found[match.group(1).replace("-", "_")] = int(match.group(2))
        if not _HOST.match(name):
            raise ConfigError(f"{where} line {number}: {name!r} is not a host name or address")
        if "slots" not in found or found["slots"] < 1:
            raise ConfigError(f"{where} line {number}: {raw.strip()!r}: expected 'HOST slots=N' with N >= 1 "
                              "(fedpft places the ranks before the run starts, so every host needs its slots)")
        if found.get("max_slots", found["slots"]) < found["slots"]:
            raise ConfigError(f"{where} line {number}: max_slots={found['max_slots']} is less than "
                              f"slots={found['slots']}")
        if name in slots:
            raise ConfigError(f"{where} line {number}: host {name!r} is named twice: give it one line "
                              f"'{name} slots=N' (Open MPI refuses two slot counts for one host)")
        slots[name] = found["slots"]
    if not slots:
        raise ConfigError(f"{where}: names no host (expected one 'HOST slots=N' per line)")
    return [Host(name, n) for name, n in slots.items()]


def check_slots(hosts: Sequence[Host], path: Path, processes: int) -> None:
    """The hosts must hold every rank: ``processes`` (server + clients) slots at least."""
    total = sum(host.slots for host in hosts)
    if total < processes:
        raise ConfigError(f"{SECTION}.{KEY} {path}: {total} slot(s) on {len(hosts)} host(s) is fewer than the run's "
                          f"{processes} processes (1 server + {processes - 1} clients): add slots or hosts, or lower "
                          f"client_num_per_round")


def place_ranks(hosts: Sequence[Host], processes: int) -> List[str]:
    """The host of each rank 0..processes-1 under Open MPI's by-slot mapping (``--map-by slot``)."""
    placed = [host.name for host in hosts for _ in range(host.slots)]
    return placed[:processes]


def describe_placement(hosts: Sequence[Host], processes: int) -> str:
    """``'node1: server rank 0, client rank 1; node2: client ranks 2-3'`` (hosts without a rank left out)."""
    ranks: Dict[str, List[int]] = {}
    for rank, name in enumerate(place_ranks(hosts, processes)):
        ranks.setdefault(name, []).append(rank)
    parts = []
    for name, held in ranks.items():
        roles = (["server rank 0"] if held[0] == 0 else []) + _clients([r for r in held if r])
        parts.append(f"{name}: {', '.join(roles)}")
    return "; ".join(parts)


def _clients(ranks: List[int]) -> List[str]:
    if not ranks:
        return []
    if len(ranks) == 1:
        return [f"client rank {ranks[0]}"]
    return [f"client ranks {ranks[0]}-{ranks[-1]}"]   # by-slot ranks on one host are consecutive


def mpirun_command(mpirun: str, processes: int, hostfile: Optional[Path], env: Mapping[str, str]) -> List[str]:
    """The mpirun part of the command line (the participant's command follows it).

    On this host only: ``mpirun --oversubscribe -np N+1``. With a hostfile: ``mpirun --hostfile FILE
    --map-by slot --bind-to none -np N+1 -x NAME ...`` for each :data:`FORWARD` name set in ``env``.
    """
    if hostfile is None:
        return [mpirun, "--oversubscribe", "-np", str(processes)]
    command = [mpirun, "--hostfile", str(hostfile), "--map-by", "slot", "--bind-to", "none", "-np", str(processes)]
    for name in FORWARD:
        if name in env:
            command += ["-x", name]
    return command
