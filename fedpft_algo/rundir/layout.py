"""The run directory: the one place that names its files.

``fedpft run`` makes one directory per run; the launcher, every participant and ``fedpft predict``
meet there::

    config.yaml                   the resolved config the participants read
    config.resume.yaml            what the participants of a resumed run read (config.yaml stays)
    grpc_ipconfig.csv             GRPC only: the address of every rank
    logs/<role>_<rank>.log        each process's stdout+stderr (MPI: one mpirun.log)
    logs/processes.jsonl          every process the launcher started: role, rank, pid, command
    status/<role>_<rank>.json     written by each participant: role, rank, round, phase, pid, error
    events/<role>_<rank>.jsonl    every FedML hook call, in order, with its round
    metrics.jsonl                 written by the server: one JSON object per finished round
    samples.jsonl                 decoders: the plugged-in FM's greedy answer to a fixed prompt, per round
    metrics.csv, metrics.json, accuracy.png    written by the launcher after a successful run
    partition.json, partition.txt              the client split (label counts per client)
    final/trainable.safetensors   the tuned LoRA + head for the FM
    final/adapter/                the same as a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)
    checkpoint/                   server checkpoints (see :mod:`fedpft_algo.rundir.checkpoint`)
    home/                         the participants' HOME (FedML writes ~/.fedml and ./tmp/fedml)

The launcher hands the directory to its participants in the environment variable
:data:`ENV_VAR`; :meth:`RunDir.from_env` is the one place that reads it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

ENV_VAR = "FEDPFT_RUN_DIR"


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory (nothing is created or read here)."""

    root: Path

    CONFIG = "config.yaml"
    RESUME_CONFIG = "config.resume.yaml"
    ADDRESSES = "grpc_ipconfig.csv"
    METRICS_JSONL = "metrics.jsonl"
    SAMPLES_JSONL = "samples.jsonl"   # decoders: a greedy answer to a fixed prompt, one object per round
    PROGRESS_JSON = "progress.json"   # the server's current phase (building, aligning, rounds) and its steps
    METRICS_CSV = "metrics.csv"
    METRICS_JSON = "metrics.json"
    ACCURACY_PNG = "accuracy.png"
    PARTITION_JSON = "partition.json"
    PARTITION_TXT = "partition.txt"
    FINAL_WEIGHTS = "final/trainable.safetensors"
    FINAL_ADAPTER = "final/adapter"   # the same LoRA + head as a PEFT adapter folder
    CHECKPOINTS = "checkpoint"
    STATUS = "status"
    EVENTS = "events"
    LOGS = "logs"
    TENSORBOARD = "tensorboard"   # fedpft_tensorboard: TensorBoard event files of the per-round metrics
    HOME = "home"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def __fspath__(self) -> str:
        return str(self.root)

    # ------------------------------------------------------------------ the environment variable
    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> Optional["RunDir"]:
        """The run directory the launcher named in :data:`ENV_VAR`; None outside ``fedpft run``."""
        value = (os.environ if environ is None else environ).get(ENV_VAR)
        return cls(Path(value)) if value else None

    def env(self) -> dict:
        """What a participant's environment needs to find this run directory."""
        return {ENV_VAR: str(self.root)}

    # ------------------------------------------------------------------ files
    @property
    def config(self) -> Path:
        return self.root / self.CONFIG

    @property
    def resume_config(self) -> Path:
        return self.root / self.RESUME_CONFIG

    @property
    def addresses(self) -> Path:
        return self.root / self.ADDRESSES

    @property
    def metrics_jsonl(self) -> Path:
        return self.root / self.METRICS_JSONL

    @property
    def samples_jsonl(self) -> Path:
        return self.root / self.SAMPLES_JSONL

    @property
    def metrics_csv(self) -> Path:
        return self.root / self.METRICS_CSV

    @property
    def metrics_json(self) -> Path:
        return self.root / self.METRICS_JSON

    @property
    def accuracy_png(self) -> Path:
        return self.root / self.ACCURACY_PNG

    @property
    def partition_json(self) -> Path:
        return self.root / self.PARTITION_JSON

    @property
    def partition_txt(self) -> Path:
        return self.root / self.PARTITION_TXT

    @property
    def progress_json(self) -> Path:
        return self.root / self.PROGRESS_JSON

    @property
    def final_weights(self) -> Path:
        return self.root / self.FINAL_WEIGHTS

    @property
    def final_adapter(self) -> Path:
        return self.root / self.FINAL_ADAPTER

    # ------------------------------------------------------------------ folders, and the files in them
    @property
    def checkpoints(self) -> Path:
        return self.root / self.CHECKPOINTS

    @property
    def status_dir(self) -> Path:
        return self.root / self.STATUS

    @property
    def events_dir(self) -> Path:
        return self.root / self.EVENTS

    @property
    def logs(self) -> Path:
        return self.root / self.LOGS

    @property
    def home(self) -> Path:
        return self.root / self.HOME

    @property
    def processes_log(self) -> Path:
        return self.logs / "processes.jsonl"

    def status_file(self, name: str) -> Path:
        """``status/<role>_<rank>.json``."""
        return self.status_dir / f"{name}.json"

    def events_file(self, name: str) -> Path:
        """``events/<role>_<rank>.jsonl``."""
        return self.events_dir / f"{name}.jsonl"

    def log_file(self, name: str) -> Path:
        """``logs/<name>.log``: ``server_0``, ``client_2`` or ``mpirun``."""
        return self.logs / f"{name}.log"
