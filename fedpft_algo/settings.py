"""The FedML keys the plugin uses, read once into :class:`RunSettings`.

FedML flattens every yaml section into one namespace. :class:`RunSettings` picks out what the
plugin needs (FedML's own training keys plus the ``fedpft_*`` section as a
:class:`~fedpft_algo.config.FedPFTConfig`) from the flat view of a config: the launcher's
pre-flight builds it from the yaml (:meth:`RunSettings.from_sections`), a FedML process from its
``args`` (:meth:`RunSettings.from_args`); nothing below it touches ``args``.
"""
from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from .config import FedPFTConfig, Sections, flatten
from .errors import ConfigError


@dataclass(frozen=True)
class RunSettings:
    """FedML's keys that the plugin reads, typed, and the ``fedpft_*`` section as :class:`FedPFTConfig`.

    A resumed run (``fedpft run --resume``) is the one place where the plugin's view differs from
    FedML's: FedML counts rounds per process, so its ``comm_round`` is the rounds still to run
    (:meth:`resumed` writes that), while ``comm_round`` here is the run's total and
    ``round_offset`` the rounds the checkpoint ``resume_checkpoint`` holds (:meth:`from_flat`).
    """

    fedpft: FedPFTConfig
    model: str
    dataset: str
    max_train_examples: Optional[int]
    max_test_examples: Optional[int]
    partition_method: str
    partition_alpha: float
    client_num_in_total: int
    client_num_per_round: int
    comm_round: int
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    seed: int
    cache_dir: Path          # <fedpft_cache_dir or data_cache_dir or ~/.cache>/fedpft
    round_offset: int = 0
    resume_checkpoint: Optional[Path] = None

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> "RunSettings":
        fedpft = FedPFTConfig.from_flat(flat)

        def get(name, default=None, required=False):
            if flat.get(name) is None:
                if required:
                    raise ConfigError(f"config key {name!r} is missing")
                return default
            return flat[name]

        cache = fedpft.cache_dir or get("data_cache_dir")
        offset = int(get("resume_round", 0))
        return cls(
            fedpft=fedpft, model=str(get("model", "minilm-l6")), dataset=str(get("dataset", required=True)),
            max_train_examples=get("max_train_examples"), max_test_examples=get("max_test_examples"),
            partition_method=str(get("partition_method", "hetero")), partition_alpha=float(get("partition_alpha", 0.5)),
            client_num_in_total=int(get("client_num_in_total", required=True)),
            client_num_per_round=int(get("client_num_per_round", required=True)),
            comm_round=int(get("comm_round", required=True)) + offset,
            epochs=int(get("epochs", 1)), batch_size=int(get("batch_size", 16)),
            learning_rate=float(get("learning_rate", 8e-4)), weight_decay=float(get("weight_decay", 0.0)),
            seed=int(get("random_seed", 0)),
            cache_dir=(Path(os.path.expanduser(cache)) if cache else Path.home() / ".cache") / "fedpft",
            round_offset=offset,
            resume_checkpoint=Path(get("resume_checkpoint")) if get("resume_checkpoint") else None,
        )

    @classmethod
    def from_sections(cls, config: Sections) -> "RunSettings":
        return cls.from_flat(flatten(config))

    @classmethod
    def from_args(cls, args: Any) -> "RunSettings":
        """From FedML's ``args`` (one attribute per yaml key, next to FedML's own)."""
        return cls.from_flat(vars(args))

    @staticmethod
    def resumed(config: Sections, rounds_done: int, checkpoint: os.PathLike) -> Sections:
        """``config`` for the participants of a run continued after ``rounds_done`` rounds from ``checkpoint``:
        FedML's ``comm_round`` becomes the rounds still to run (:meth:`from_flat` adds them back)."""
        total = flatten(config)["comm_round"]
        resumed = copy.deepcopy(config)
        for keys in resumed.values():
            if "comm_round" in keys:
                keys["comm_round"] = total - rounds_done
        resumed.setdefault("common_args", {}).update(resume_round=rounds_done, resume_checkpoint=str(checkpoint))
        return resumed

    @property
    def rounds(self) -> range:
        """The rounds this process runs, FedML's 0-based round indices counted over the whole run."""
        return range(self.round_offset, self.comm_round)

    def task_args(self) -> Dict[str, Any]:
        """The keyword arguments of :func:`fedpft_algo.data.load_task` for this run (after the task name)."""
        return {"text_columns": self.fedpft.text_columns or None, "label_column": self.fedpft.label_column,
                "max_train": self.max_train_examples, "max_test": self.max_test_examples, "seed": self.seed}

    def round_seed(self, round_idx: int, who: Any = "server") -> int:
        """A seed for one participant's randomness in one round (data order, dropout, sampling ties).

        Derived from (random_seed, round, participant) alone, so a round computes the same thing
        whichever process runs it and whatever ran before it: the property a resumed run needs.
        """
        digest = hashlib.sha256(f"{self.seed}:{round_idx}:{who}".encode()).digest()
        return int.from_bytes(digest[:8], "little") % 2**63



# ---------------------------------------------------------------------- a device per rank (FedML's gpu mapping)
def gpu_mapping(mapping_file: os.PathLike, key: str) -> List[Tuple[str, int]]:
    """FedML's ``gpu_mapping.yaml``: ``(host, GPU index)`` of each process, in rank order.

    FedML's format and rule (``fedml/device/gpu_mapping_mpi.py``): under ``key``, each host maps to a
    list of process counts, one per GPU of that host (``host1: [2, 1]`` = 2 processes on its GPU 0,
    1 on its GPU 1); ranks fill the hosts in file order, each host's GPUs in index order.
    """
    path = Path(mapping_file)
    if not path.is_file():
        raise ConfigError(f"device_args.gpu_mapping_file={str(path)!r}: no such file (FedML's GPU mapping: "
                          f"KEY: {{host: [processes on GPU 0, on GPU 1, ...]}})")
    try:
        mapping = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"gpu mapping file {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(mapping, dict) or key not in mapping:
        keys = ", ".join(map(str, mapping)) if isinstance(mapping, dict) else "none"
        raise ConfigError(f"device_args.gpu_mapping_key={key!r}: no such key in gpu mapping file {path} "
                          f"(its keys: {keys})")
    hosts = mapping[key]
    if not isinstance(hosts, dict) or not hosts or not all(
            isinstance(counts, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                             for n in counts) for counts in hosts.values()):
        raise ConfigError(f"gpu mapping file {path}: key {key!r} is {hosts!r}: expected host: [processes on GPU 0, "
                          f"on GPU 1, ...] (integers >= 0), e.g. localhost: [2, 1]")
    return [(str(host), gpu) for host, counts in hosts.items() for gpu, n in enumerate(counts) for _ in range(n)]


def device_for_rank(rank: int, world_size: int, mapping_file: os.PathLike, key: str,
                    hostname: Optional[str] = None, visible_gpus: Optional[int] = None) -> str:
    """The device FedML's mapping gives ``rank`` of a run of ``world_size`` processes: ``"cuda:<i>"``.

    The mapping must name exactly ``world_size`` processes (FedML asserts the same, after start-up).
    With ``visible_gpus``, each GPU index of the mapping's hosts must be below it. ``hostname``
    (this process's host) does not choose the device, as in FedML: the rank does; it only names
    the host in the error when the mapping places ``rank`` on a GPU this host lacks.
    """
    slots = gpu_mapping(mapping_file, key)
    if len(slots) != world_size:
        raise ConfigError(f"gpu mapping file {mapping_file}: key {key!r} places {len(slots)} processes; the run has "
                          f"{world_size} (the server and {world_size - 1} clients): make the counts sum to "
                          f"{world_size}")
    if visible_gpus is not None:
        for host, gpu in slots:
            if gpu >= visible_gpus:
                raise ConfigError(f"gpu mapping file {mapping_file}: key {key!r} puts a process on GPU {gpu} of "
                                  f"{host}; {hostname or 'this host'} has {visible_gpus} visible GPU(s) "
                                  f"(indices 0..{visible_gpus - 1})")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a run of {world_size} processes")
    return f"cuda:{slots[rank][1]}"


def rank_device(flat: Mapping[str, Any], rank: int, hostname: Optional[str] = None,
                visible_gpus: Optional[int] = None) -> str:
    """The device of ``rank`` under a flat config (``vars(args)`` or :func:`flatten` of the yaml).

    ``using_gpu: false`` (or absent): ``"cpu"``. Single process (simulation/sp): ``cuda:<gpu_id>``
    (FedML's default 0). MPI simulation and cross-silo: :func:`device_for_rank` over the
    ``client_num_per_round + 1`` processes, from ``gpu_mapping_file`` and ``gpu_mapping_key``.
    """
    if flat.get("using_gpu") is not True:
        return "cpu"
    if flat.get("training_type") == "simulation" and flat.get("backend") == "sp":
        gpu = int(flat.get("gpu_id") or 0)
        if visible_gpus is not None and gpu >= visible_gpus:
            raise ConfigError(f"device_args.gpu_id={gpu}: this host has {visible_gpus} visible GPU(s)")
        return f"cuda:{gpu}"
    for name in ("gpu_mapping_file", "gpu_mapping_key"):
        if not flat.get(name):
            raise ConfigError(f"device_args.{name} is missing: using_gpu: true with backend {flat.get('backend')} "
                              f"places each rank by FedML's GPU mapping (see fedml_config/gpu_mapping.yaml)")
    return device_for_rank(rank, int(flat["client_num_per_round"]) + 1, flat["gpu_mapping_file"],
                           str(flat["gpu_mapping_key"]), hostname, visible_gpus)
