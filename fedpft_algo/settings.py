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
from typing import Any, Dict, Mapping, Optional

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

