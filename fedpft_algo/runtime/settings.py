"""Run settings read once from FedML's flattened ``args``.

FedML flattens every yaml section into one namespace. :class:`RunSettings` picks out what the
plugin needs (FedML's own training keys plus the ``fedpft_*`` section as a
:class:`~fedpft_algo.config.FedPFTConfig`) so that nothing below it touches ``args``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple

from ..config import FedPFTConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class RunSettings:
    fedpft: FedPFTConfig
    model: str
    dataset: str
    text_columns: Optional[Tuple[str, ...]]
    label_column: Optional[str]
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
    run_dir: Optional[Path]
    cache_dir: Path
    # a resumed run (``fedpft run --resume``): rounds already done, and the server checkpoint holding them.
    # FedML's ``comm_round`` then counts the remaining rounds; ``comm_round`` here is the run's total.
    round_offset: int = 0
    resume_checkpoint: Optional[Path] = None

    @classmethod
    def from_args(cls, args: Any) -> "RunSettings":
        fedpft = FedPFTConfig.from_args(args)

        def get(name, default=None, required=False):
            if not hasattr(args, name) or getattr(args, name) is None:
                if required:
                    raise ConfigError(f"config key {name!r} is missing")
                return default
            return getattr(args, name)

        cache = fedpft.cache_dir or get("data_cache_dir", None)
        cache_dir = Path(os.path.expanduser(cache)) / "fedpft" if cache else Path.home() / ".cache" / "fedpft"
        run_dir = os.environ.get("FEDPFT_RUN_DIR") or get("run_dir")
        return cls(
            fedpft=fedpft,
            model=str(get("model", "minilm-l6")),
            dataset=str(get("dataset", required=True)),
            text_columns=fedpft.text_columns or None,
            label_column=fedpft.label_column,
            max_train_examples=get("max_train_examples"),
            max_test_examples=get("max_test_examples"),
            partition_method=str(get("partition_method", "hetero")),
            partition_alpha=float(get("partition_alpha", 0.5)),
            client_num_in_total=int(get("client_num_in_total", required=True)),
            client_num_per_round=int(get("client_num_per_round", required=True)),
            comm_round=int(get("comm_round", required=True)) + int(get("resume_round", 0)),
            epochs=int(get("epochs", 1)),
            batch_size=int(get("batch_size", 16)),
            learning_rate=float(get("learning_rate", 8e-4)),
            weight_decay=float(get("weight_decay", 0.0)),
            seed=int(get("random_seed", 0)),
            run_dir=Path(run_dir) if run_dir else None,
            cache_dir=cache_dir,
            round_offset=int(get("resume_round", 0)),
            resume_checkpoint=Path(get("resume_checkpoint")) if get("resume_checkpoint") else None,
        )

    def round_seed(self, round_idx: int, who: Any = "server") -> int:
        """A seed for one participant's randomness in one round (data order, dropout, sampling ties).

        Derived from (random_seed, round, participant) alone, so a round computes the same thing
        whichever process runs it and whatever ran before it: the property a resumed run needs.
        """
        digest = hashlib.sha256(f"{self.seed}:{round_idx}:{who}".encode()).digest()
        return int.from_bytes(digest[:8], "little") % 2**63


def reseed_(seed: int, loader: Any = None) -> None:
    """Seed torch's global RNG and, if it shuffles with a generator of its own, ``loader``'s order."""
    import torch

    torch.manual_seed(seed)
    generator = getattr(loader, "generator", None)
    if generator is not None:
        generator.manual_seed(seed)

