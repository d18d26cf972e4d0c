"""What every data source of :mod:`fedpft_algo.data` shares: the task record, the fixed train/test split,
locating package data without importing the package, and reading a CSV with one-line errors."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

from ..errors import DataError

logger = logging.getLogger(__name__)

Inputs = Union[List[str], List[Tuple[str, str]], np.ndarray]
SPLIT_SEED = 20240418   # fixed: the built-in and single-file test splits do not depend on the run seed
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class TaskData:
    """A labelled classification task with a train and a test split.

    Text inputs are ``list[str]`` or ``list[tuple[str, str]]`` (sentence pairs); image inputs are
    ``uint8`` arrays ``(N, H, W)`` or ``(N, H, W, C)``. Labels are ``int64`` ids into ``label_names``.
    """

    name: str
    modality: str
    train_inputs: Inputs
    train_labels: np.ndarray
    test_inputs: Inputs
    test_labels: np.ndarray
    label_names: List[str]

    def __post_init__(self) -> None:
        if self.modality not in ("text", "image"):
            raise DataError(f"task {self.name!r}: modality {self.modality!r} is not one of 'text', 'image'")
        for split in ("train", "test"):
            inputs = getattr(self, f"{split}_inputs")
            labels = np.asarray(getattr(self, f"{split}_labels"), dtype=np.int64).reshape(-1)
            object.__setattr__(self, f"{split}_labels", labels)  # frozen: normalise dtype once, here
            if len(inputs) == 0:
                raise DataError(f"task {self.name!r}: the {split} split is empty")
            if len(inputs) != len(labels):
                raise DataError(f"task {self.name!r}: {len(inputs)} {split} inputs but {len(labels)} labels")
            if labels.min() < 0 or labels.max() >= len(self.label_names):
                raise DataError(f"task {self.name!r}: {split} labels outside 0..{len(self.label_names) - 1}")
            if self.modality == "image" and not (isinstance(inputs, np.ndarray) and inputs.dtype == np.uint8
                                                 and inputs.ndim in (3, 4)):
                raise DataError(f"task {self.name!r}: {split} images must be a uint8 array (N,H,W) or (N,H,W,C)")

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        """True for sentence-pair tasks (NLI, paraphrase)."""
        return self.modality == "text" and isinstance(self.train_inputs[0], tuple)


def package_dir(module: str, install: str) -> Path:
    """Directory of an installed package, found without importing it; DataError naming ``install`` if absent."""
    try:
        spec = find_spec(module)
    except ModuleNotFoundError:  # a missing parent package of a dotted name
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {module!r} is not installed: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def data_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    return path


def split_train_test(labels: np.ndarray, fraction: float = TEST_FRACTION,
                     seed: int = SPLIT_SEED) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded (train, test) index arrays; stratified when every class has at least 2 examples."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    if len(index) < 2:
        raise DataError(f"cannot split {len(index)} example(s) into train and test: need at least 2")
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    train, test = train_test_split(index, test_size=fraction, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(test)


def dedupe_texts(texts: Sequence, labels: Sequence[int], where: str) -> Tuple[list, np.ndarray]:
    """Keep the first of exact duplicates; drop texts that occur with more than one label."""
    seen: Dict[object, int] = {}
    conflicting = set()
    for text, label in zip(texts, labels):
        if seen.setdefault(text, int(label)) != int(label):
            conflicting.add(text)
    kept = [(t, seen[t]) for t in seen if t not in conflicting]
    if len(kept) < len(texts):
        logger.info("%s: kept %d unique texts of %d (%d with conflicting labels dropped)",
                    where, len(kept), len(texts), len(conflicting))
    return [t for t, _ in kept], np.array([y for _, y in kept], dtype=np.int64)


def read_csv(path: Path, **kwargs):
    import pandas as pd

    try:
        return pd.read_csv(path, encoding="utf-8", **kwargs)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path} is empty") from exc
    except pd.errors.ParserError as exc:
        raise DataError(f"{path} is not a well-formed table: {str(exc).strip().splitlines()[-1]}") from exc
