"""From a :class:`TaskData` to PyTorch loaders of dict batches, and to FedML's 8-item data set list.

Text is tokenised once (:func:`encode_text`, cached on disk as ``.npz``) without padding; the
:class:`TextCollator` pads each batch to its longest example. Images stay ``uint8`` until the
:class:`ImageCollator` resizes, converts channels and normalises a batch to ``pixel_values``, so
a large image set never exists as float tensors at once. One loader serves both modalities:
batches are dicts (``input_ids``, ``attention_mask``, [``token_type_ids``] or ``pixel_values``;
``labels`` when labels are given) that go straight into a Hugging Face model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from .partition import partition, partition_records, partition_table
from .base import TaskData

logger = logging.getLogger(__name__)

TEXT_FIELDS = ("input_ids", "attention_mask", "token_type_ids")
_CACHE_FORMAT = 1  # bump when the cached layout changes
Features = Union[List[Dict[str, np.ndarray]], np.ndarray]


# ----------------------------------------------------------------------------- text
def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of what decides token ids: tokenizer class, vocabulary, special tokens, lower-casing."""
    digest = hashlib.sha256()
    for part in (type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()), tokenizer.all_special_tokens,
                 getattr(tokenizer, "do_lower_case", None), getattr(tokenizer, "truncation_side", None)):
        digest.update(json.dumps(part, ensure_ascii=False).encode())
    return digest.hexdigest()


def _check_texts(inputs: Sequence) -> bool:
    """Validate text inputs; True for sentence pairs."""
    if isinstance(inputs, np.ndarray) or len(inputs) == 0:
        raise DataError("text inputs must be a non-empty list of strings or of (str, str) pairs")
    pair = isinstance(inputs[0], tuple)
    ok = (lambda x: isinstance(x, tuple) and len(x) == 2 and all(isinstance(s, str) for s in x)) if pair \
        else (lambda x: isinstance(x, str))
    bad = next((i for i, x in enumerate(inputs) if not ok(x)), None)
    if bad is not None:
        expected = "a (str, str) pair" if pair else "str"
        raise DataError(f"text input {bad} is {type(inputs[bad]).__name__}: expected {expected}")
    return pair


def encode_text(tokenizer, inputs: Sequence, max_length: int, cache_dir: Optional[str] = None) -> List[dict]:
    """Token ids per example (truncated to ``max_length``, unpadded); cached in ``cache_dir`` when given.

    The cache key is (tokenizer fingerprint, ``max_length``, sha256 of the inputs); files are
    plain ``np.savez`` arrays (flat int32 values + offsets per field), never pickles.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise DataError(f"max_length must be an integer >= 2, got {max_length!r}")
    pair = _check_texts(inputs)
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(json.dumps([_CACHE_FORMAT, tokenizer_fingerprint(tokenizer), max_length,
                                            hashlib.sha256(json.dumps(list(inputs)).encode()).hexdigest()]).encode())
        path = Path(cache_dir) / f"tokens-{digest.hexdigest()[:32]}.npz"
        cached = _load_cached(path, len(inputs))
        if cached is not None:
            return cached
    columns: Dict[str, list] = {}
    for start in range(0, len(inputs), 1024):
        chunk = inputs[start: start + 1024]
        first, second = ([a for a, _ in chunk], [b for _, b in chunk]) if pair else (list(chunk), None)
        encoded = tokenizer(first, second, truncation=True, max_length=max_length, padding=False)
        for key in TEXT_FIELDS:
            if key in encoded:
                columns.setdefault(key, []).extend(encoded[key])
    features = [{key: np.asarray(columns[key][i], dtype=np.int64) for key in columns} for i in range(len(inputs))]
    if path is not None:
        _save_cached(path, columns)
    return features


def _save_cached(path: Path, columns: Dict[str, list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(ids) for ids in columns["input_ids"]], dtype=np.int64)
    arrays = {"offsets": np.concatenate([[0], np.cumsum(lengths)])}
    arrays.update({key: np.fromiter((t for ids in rows for t in ids), dtype=np.int32) for key, rows in columns.items()})
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:  # a file object: np.savez appends no suffix
        np.savez(handle, **arrays)
    os.replace(tmp, path)  # atomic: concurrent FedML ranks never read half a file


def _load_cached(path: Path, count: int) -> Optional[List[dict]]:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            offsets = stored["offsets"]
            columns = {key: np.split(stored[key].astype(np.int64), offsets[1:-1]) for key in TEXT_FIELDS
                       if key in stored.files}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        logger.warning("ignoring unreadable token cache %s: %s", path, exc)
        return None
    if len(offsets) != count + 1:
        logger.warning("ignoring token cache %s: %d examples, expected %d", path, len(offsets) - 1, count)
        return None
    logger.info("token cache hit: %s", path)
    return [{key: columns[key][i] for key in columns} for i in range(count)]


class TextCollator:
    """Pads a list of feature dicts to the longest in the batch; ``labels`` become a long tensor."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: Optional[int] = None):
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: List[dict]) -> Dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {}
        for key in TEXT_FIELDS:
            if key in features[0]:
                out = torch.full((len(features), length), self.pad_token_id if key == "input_ids" else 0,
                                 dtype=torch.long)
                for row, feature in enumerate(features):
                    out[row, : len(feature[key])] = torch.as_tensor(feature[key], dtype=torch.long)
                batch[key] = out
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)
        return batch


# ----------------------------------------------------------------------------- images
@dataclass(frozen=True)
class ImageSpec:
    """What a vision model expects: square-or-not size, channels, per-channel mean and std."""
    height: int
    width: int
    num_channels: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]


def is_image_encoder(encoder) -> bool:
    return hasattr(encoder, "image_mean") or (hasattr(encoder, "image_size") and hasattr(encoder, "num_channels"))


def image_spec(encoder) -> ImageSpec:
    """From a ViT-style config (``image_size``, ``num_channels``; ViT's mean = std = 0.5) or an image processor."""
    if hasattr(encoder, "image_mean"):  # an image processor
        # a dict, transformers 5's SizeDict (same .get, not a dict) or a bare int
        size = {"height": encoder.size, "width": encoder.size} if isinstance(encoder.size, int) else encoder.size
        height = size.get("height", size.get("shortest_edge"))
        width = size.get("width", size.get("shortest_edge"))
        mean, std = tuple(encoder.image_mean), tuple(encoder.image_std)
        return ImageSpec(int(height), int(width), len(mean), mean, std)
    if not is_image_encoder(encoder):
        raise DataError(f"{type(encoder).__name__} is neither a tokenizer nor an image config/processor")
    size = encoder.image_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    channels = int(encoder.num_channels)
    return ImageSpec(int(height), int(width), channels, (0.5,) * channels, (0.5,) * channels)


def preprocess_images(images: np.ndarray, spec: ImageSpec) -> torch.Tensor:
    """uint8 ``(N,H,W)``/``(N,H,W,C)`` -> float ``pixel_values`` ``(N,C,height,width)``, normalised."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError("images must be a uint8 array (N,H,W) or (N,H,W,C)")
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[1] == 1 and spec.num_channels == 3:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 3 and spec.num_channels == 1:  # ITU-R 601 luma, as PIL's convert("L")
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif x.shape[1] != spec.num_channels:
        raise DataError(f"images have {x.shape[1]} channels; the model expects {spec.num_channels}")
    if tuple(x.shape[2:]) != (spec.height, spec.width):
        x = torch.nn.functional.interpolate(x, size=(spec.height, spec.width), mode="bilinear", align_corners=False,
                                            antialias=True)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return (x - mean) / std


class ImageCollator:
    """Stacks ``{"image": uint8 array}`` features into ``pixel_values`` via :func:`preprocess_images`."""

    def __init__(self, spec: ImageSpec):
        self.spec = spec

    def __call__(self, features: List[dict]) -> Dict[str, torch.Tensor]:
        batch = {"pixel_values": preprocess_images(np.stack([f["image"] for f in features]), self.spec)}
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)
        return batch


# ----------------------------------------------------------------------------- loaders
def make_collator(encoder):
    """A :class:`TextCollator` for a tokenizer, an :class:`ImageCollator` for an image config/processor."""
    if is_image_encoder(encoder):
        return ImageCollator(image_spec(encoder))
    pad = encoder.pad_token_id if encoder.pad_token_id is not None else getattr(encoder, "eos_token_id", None)
    if pad is None:
        raise DataError(f"tokenizer {type(encoder).__name__} has neither a pad nor an eos token to pad with")
    return TextCollator(pad)


def encode_inputs(encoder, inputs, max_length: int, cache_dir: Optional[str] = None) -> Features:
    """Token features for text (see :func:`encode_text`); image arrays pass through unchanged."""
    if is_image_encoder(encoder):
        if not isinstance(inputs, np.ndarray):
            raise DataError("an image config/processor was given, but the inputs are text")
        return inputs
    if isinstance(inputs, np.ndarray):
        raise DataError("a tokenizer was given, but the inputs are images")
    return encode_text(encoder, inputs, max_length, cache_dir)


class FeatureDataset(Dataset):
    """Examples ``indices`` of encoded text features or a uint8 image array, with optional labels."""

    def __init__(self, features: Features, labels: Optional[np.ndarray] = None, indices=None):
        self.features, self.labels = features, None if labels is None else np.asarray(labels, dtype=np.int64)
        self.indices = np.arange(len(features)) if indices is None else np.asarray(indices, dtype=np.int64)
        if self.labels is not None and len(self.labels) != len(features):
            raise DataError(f"{len(features)} inputs but {len(self.labels)} labels")
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= len(features)):
            raise DataError(f"indices outside 0..{len(features) - 1}")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        j = int(self.indices[i])
        item = {"image": self.features[j]} if isinstance(self.features, np.ndarray) else dict(self.features[j])
        if self.labels is not None:
            item["labels"] = int(self.labels[j])
        return item


def make_loader(features: Features, labels: Optional[np.ndarray] = None, indices=None, *, collator,
                batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A single-process DataLoader of dict batches; with ``shuffle`` the order is seeded by ``seed``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(FeatureDataset(features, labels, indices), batch_size=batch_size, shuffle=shuffle,
                      generator=generator, collate_fn=collator, num_workers=0)


class FedMLDataset(list):
    """FedML's 8-item list ``[train_num, test_num, train_global, test_global, train_num_dict,
    train_local_dict, test_local_dict, class_num]`` with the client split attached:
    ``partition`` (client -> train indices), ``records`` (JSON-able rows) and :meth:`table`."""

    partition: Dict[int, np.ndarray]
    records: List[dict]
    label_names: List[str]
    _labels: np.ndarray

    def table(self) -> str:
        return partition_table(self._labels, self.partition, self.label_names)


def build_fedml_dataset(task: TaskData, *, encoder, client_num: int, method: str, alpha: float, batch_size: int,
                        seed: int, max_length: int, min_per_client: int = 10,
                        cache_dir: Optional[str] = None, encoded=None, collator=None) -> FedMLDataset:
    """Partition ``task``'s train split over ``client_num`` clients and build FedML's data set list.

    Clients hold no test split of their own: FedPFT evaluates on the task's test set, so every
    ``test_local_dict`` entry is the global test loader. Client ``i``'s loader shuffles with
    seed ``seed + 1 + i``; the global train loader with ``seed``.

    ``encoded``: ``((train features, train labels or None), (test features, test labels or None))`` already
    encoded by the run's task kind (decoders: features that carry their own token labels), with its
    ``collator``; the split still follows the task's class labels.
    """
    parts = partition(task.train_labels, client_num, method=method, alpha=alpha, seed=seed,
                      min_per_client=min_per_client)
    if encoded is None:
        collator = make_collator(encoder)
        encoded = ((encode_inputs(encoder, task.train_inputs, max_length, cache_dir), task.train_labels),
                   (encode_inputs(encoder, task.test_inputs, max_length, cache_dir), task.test_labels))
    (train_x, train_y), (test_x, test_y) = encoded
    train_global = make_loader(train_x, train_y, collator=collator, batch_size=batch_size, shuffle=True, seed=seed)
    test_global = make_loader(test_x, test_y, collator=collator, batch_size=batch_size)
    train_local = {i: make_loader(train_x, train_y, parts[i], collator=collator, batch_size=batch_size,
                                  shuffle=True, seed=seed + 1 + i) for i in range(client_num)}
    data = FedMLDataset([len(task.train_labels), len(task.test_labels), train_global, test_global,
                         {i: len(parts[i]) for i in range(client_num)}, train_local,
                         {i: test_global for i in range(client_num)}, task.num_labels])
    data.partition, data.label_names, data._labels = parts, list(task.label_names), task.train_labels
    data.records = partition_records(task.train_labels, parts, task.label_names)
    logger.info("FedML data set for %s: %d clients (%s, alpha=%s), sizes %s", task.name, client_num, method, alpha,
                [len(parts[i]) for i in range(client_num)])
    return data
