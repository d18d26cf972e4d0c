"""Server checkpoints of a FedPFT run, and what ``fedpft run --resume`` needs from them.

Every ``fedpft_checkpoint_interval`` rounds (and after the last) the server writes, in
``<run dir>/checkpoint/``::

    round-0004.safetensors   the client model the next round starts from: every tensor of the
                             sub-FM (its FFNs as neuron-level alignment left them, LoRA, head),
                             the FM's LoRA + head under ``fm.``, the server's RNG state under
                             ``rng.``
    round-0004.json          rounds done, the run's metrics so far, a fingerprint of the config,
                             the tensor file's SHA-256; written last

Each file is written to a temporary name, flushed to disk and renamed, and the JSON (the commit
record) only after the tensors, so a crash at any point leaves the previous checkpoint whole.
Only the last ``KEEP`` checkpoints are kept. Loading reads safetensors and JSON only: nothing is
ever unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch

from ..config import flatten
from ..errors import ConfigError
from ..files import write_bytes_atomic
from .layout import RunDir

FORMAT = 1
KEEP = 2
# Keys that differ between an interrupted run and its resumption without changing what is computed.
_VOLATILE_KEYS = ("log_file_dir", "grpc_ipconfig_path", "resume_checkpoint", "resume_round", "comm_round")


@dataclass
class Checkpoint:
    path: Path                      # the .json commit record
    rounds_done: int
    meta: Dict[str, Any]

    @property
    def tensors_path(self) -> Path:
        return self.path.with_name(self.meta["tensors"])

    def load_tensors(self) -> Dict[str, torch.Tensor]:
        from safetensors.torch import load

        data = self.tensors_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.meta["sha256"]:
            raise ConfigError(f"checkpoint {self.tensors_path}: its SHA-256 does not match {self.path.name}")
        return load(data)


def config_fingerprint(config: Mapping[str, Mapping[str, Any]]) -> str:
    """A hash of everything in a run's config that decides what the run computes."""
    flat = {k: v for k, v in flatten(config).items() if k not in _VOLATILE_KEYS}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save(run_dir: os.PathLike, rounds_done: int, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Write checkpoint ``rounds_done`` (tensors first, then the JSON record); keep the last :data:`KEEP`."""
    from safetensors.torch import save

    folder = RunDir(Path(run_dir)).checkpoints
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"round-{rounds_done:04d}"
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    write_bytes_atomic(folder / f"{stem}.safetensors", data)
    record = dict(meta, format=FORMAT, rounds_done=rounds_done, tensors=f"{stem}.safetensors",
                  sha256=hashlib.sha256(data).hexdigest())
    write_bytes_atomic(folder / f"{stem}.json", json.dumps(record, indent=1, default=_jsonable).encode())
    for old in _records(folder)[:-KEEP]:
        old.path.unlink(missing_ok=True)
        old.tensors_path.unlink(missing_ok=True)
    return folder / f"{stem}.json"


def latest(run_dir: os.PathLike) -> Optional[Checkpoint]:
    """The newest complete checkpoint of ``run_dir`` (None when there is none)."""
    records = _records(RunDir(Path(run_dir)).checkpoints)
    return records[-1] if records else None


def read(path: Path) -> Checkpoint:
    """The checkpoint whose JSON record is ``path`` (a :class:`ConfigError` if it is not one)."""
    path = Path(path)
    for found in _records(path.parent):
        if found.path.resolve() == path.resolve():
            return found
    raise ConfigError(f"checkpoint {path}: not a complete fedpft checkpoint (record or tensor file missing)")


def _records(folder: Path) -> List[Checkpoint]:
    found = []
    for path in sorted(folder.glob("round-*.json")) if folder.is_dir() else ():
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            checkpoint = Checkpoint(path, int(meta["rounds_done"]), meta)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a record this module wrote
        if meta.get("format") == FORMAT and checkpoint.tensors_path.is_file():
            found.append(checkpoint)
    return sorted(found, key=lambda c: c.rounds_done)


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
