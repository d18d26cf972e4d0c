"""Tasks from the user's own data: tables, ``datasets`` directories, image folders, the hub.

Accepted by :func:`fedpft_algo.data.load_task` as a path:

* a table file ``.csv``/``.tsv``/``.json``/``.jsonl``/``.parquet`` (fixed seeded 80/20 split), or a
  directory holding ``train.<ext>`` and ``test.<ext>`` (or ``validation``/``valid``/``dev``);
* a Hugging Face ``datasets`` directory written by ``save_to_disk`` (needs ``datasets``): splits
  ``train`` and ``test``, else ``validation`` / ``validation_matched`` (MNLI); an unlabelled test
  split (labels -1, as in GLUE) is skipped;
* an image folder: ``ROOT/<class>/*.png`` (80/20 split) or ``ROOT/train/<class>/...`` and
  ``ROOT/test/<class>/...``. Images are resized to the first image's size; any colour image
  makes the whole set RGB.

Columns: ``text_columns`` (1, or 2 for sentence pairs) and ``label_column``, guessed when not
given. String labels map to sorted ids; integer labels must be 0..K-1.
"""
from __future__ import annotations

import logging
from importlib.util import find_spec
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError
from .base import TaskData, read_csv, split_train_test

logger = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TEST_SPLITS = ("test", "validation", "validation_matched", "valid", "dev")
PAIR_GUESSES = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"),
                ("question", "sentence"), ("text_a", "text_b"))
TEXT_GUESSES = ("text", "sentence", "question", "content", "review", "document", "tweet")
LABEL_GUESSES = ("label", "labels", "class", "category")
IMAGE_GUESSES = ("image", "img")


def read_table(path: Path):
    """A pandas DataFrame from a CSV/TSV/JSON(lines)/Parquet file."""
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    if suffix == ".parquet":
        if find_spec("pyarrow") is None and find_spec("fastparquet") is None:
            raise DataError(f"reading {path} needs pyarrow: pip install pyarrow")
        return pd.read_parquet(path)
    if suffix in (".json", ".jsonl"):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        try:  # a JSON array of records, or JSON lines
            import io
            return pd.read_json(io.StringIO(text), lines=not text.lstrip().startswith("["))
        except ValueError as exc:
            raise DataError(f"{path} is not a JSON array of records or JSON lines: {exc}") from exc
    raise DataError(f"unsupported file type {suffix!r} for {path}: use one of {', '.join(TABLE_SUFFIXES)}")


def choose_columns(columns: Sequence[str], text_columns: Optional[Sequence[str]], label_column: Optional[str],
                   where: str) -> Tuple[List[str], str]:
    """Validate or guess (text columns, label column) among ``columns``."""
    present = list(columns)
    if text_columns is None:
        pairs = [list(p) for p in PAIR_GUESSES if set(p) <= set(present)]
        singles = [[c] for c in TEXT_GUESSES if c in present]
        if not pairs and not singles:
            raise DataError(f"{where}: no text column found among {present}: pass text_columns")
        text_columns = (pairs or singles)[0]
    text_columns = [text_columns] if isinstance(text_columns, str) else list(text_columns)
    if len(text_columns) not in (1, 2):
        raise DataError(f"{where}: text_columns must name 1 column (or 2 for sentence pairs), got {text_columns}")
    if label_column is None:
        found = [c for c in LABEL_GUESSES if c in present]
        if not found:
            raise DataError(f"{where}: no label column found among {present}: pass label_column")
        label_column = found[0]
    for column in (*text_columns, label_column):
        if column not in present:
            raise DataError(f"{where}: column {column!r} not found; columns present: {present}")
    return text_columns, label_column


def encode_labels(train_raw: Sequence, test_raw: Sequence, where: str,
                  names: Optional[Sequence[str]] = None) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Label ids and names. Integer labels stay (must be 0..K-1); other labels map to sorted ids."""
    train_arr, test_arr = np.asarray(train_raw), np.asarray(test_raw)
    both = np.concatenate([train_arr, test_arr])
    integral = both.dtype.kind in "iu" or (both.dtype.kind == "f" and np.all(np.mod(both, 1) == 0))
    if integral:
        both = both.astype(np.int64)
        k = len(names) if names is not None else len(np.unique(both))
        if both.min() < 0 or both.max() >= k:
            bad = sorted(set(both[(both < 0) | (both >= k)].tolist()))[:5]
            raise DataError(f"{where}: integer labels must be 0..{k - 1} (contiguous), found {bad}")
        return (both[: len(train_arr)], both[len(train_arr):],
                list(names) if names is not None else [str(i) for i in range(k)])
    train_str, test_str = [str(v) for v in train_arr], [str(v) for v in test_arr]
    label_names = sorted(set(train_str))
    unknown = sorted(set(test_str) - set(label_names))
    if unknown:
        raise DataError(f"{where}: test labels {unknown[:5]} are outside the label set {label_names[:20]}")
    index = {name: i for i, name in enumerate(label_names)}
    return (np.array([index[v] for v in train_str], dtype=np.int64),
            np.array([index[v] for v in test_str], dtype=np.int64), label_names)


def _frame_inputs(frame, text_columns: List[str], label_column: str, where: str):
    clean = frame.dropna(subset=[*text_columns, label_column])
    if len(clean) < len(frame):
        logger.warning("%s: dropped %d rows with a missing text or label", where, len(frame) - len(clean))
    if len(clean) == 0:
        raise DataError(f"{where}: no examples (empty data, or every row misses {text_columns + [label_column]})")
    columns = [clean[c].astype(str).tolist() for c in text_columns]
    inputs = columns[0] if len(columns) == 1 else list(zip(*columns))
    return inputs, clean[label_column].to_numpy()


def frame_task(name: str, train, test, text_columns, label_column, where: str, names=None) -> TaskData:
    """A text task from a train DataFrame and an optional test DataFrame (else a fixed 80/20 split)."""
    text_columns, label_column = choose_columns(list(train.columns), text_columns, label_column, where)
    train_x, train_raw = _frame_inputs(train, text_columns, label_column, where)
    if test is None:
        train_y, _, label_names = encode_labels(train_raw, train_raw[:0], where, names)
        tr, te = split_train_test(train_y)
        return TaskData(name, "text", [train_x[i] for i in tr], train_y[tr], [train_x[i] for i in te], train_y[te],
                        label_names)
    choose_columns(list(test.columns), text_columns, label_column, f"{where} (test split)")
    test_x, test_raw = _frame_inputs(test, text_columns, label_column, f"{where} (test split)")
    train_y, test_y, label_names = encode_labels(train_raw, test_raw, where, names)
    return TaskData(name, "text", train_x, train_y, test_x, test_y, label_names)


# ----------------------------------------------------------------------------- image folders
def _read_images(files: List[Path], size=None, mode=None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                images.append(image.copy())
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read image {file}: {exc}") from exc
    mode = mode or ("L" if all(im.mode in ("L", "1") for im in images) else "RGB")
    size = size or images[0].size
    resized = sum(im.size != size for im in images)
    if resized:
        logger.warning("resized %d images to %dx%d", resized, *size)
    return np.stack([np.asarray(im.convert(mode).resize(size) if im.size != size else im.convert(mode),
                                dtype=np.uint8) for im in images])


def _class_files(root: Path) -> dict:
    classes = {d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
               for d in sorted(root.iterdir()) if d.is_dir()}
    return {name: files for name, files in classes.items() if files}


def load_image_folder(root: Path) -> TaskData:
    split_dirs = {s: root / s for s in TEST_SPLITS if (root / s).is_dir()}
    parts = [_class_files(root / "train"), _class_files(split_dirs[next(iter(split_dirs))])] \
        if (root / "train").is_dir() and split_dirs else [_class_files(root)]
    if not parts[0]:
        raise DataError(f"{root}: no class subfolders with images ({', '.join(IMAGE_SUFFIXES)})")
    names = sorted(parts[0])
    unknown = sorted(set(parts[-1]) - set(names))
    if unknown:
        raise DataError(f"{root}: test classes {unknown} are outside the train classes {names}")
    arrays = []
    for classes in parts:
        files = [f for c in names for f in classes.get(c, [])]
        labels = np.array([i for i, c in enumerate(names) for _ in classes.get(c, [])], dtype=np.int64)
        first = arrays[0][0][0] if arrays else None  # the test split takes the train split's size and mode
        images = _read_images(files, size=None if first is None else (first.shape[1], first.shape[0]),
                              mode=None if first is None else ("L" if first.ndim == 2 else "RGB"))
        arrays.append((images, labels))
    if len(arrays) == 1:
        (images, labels), = arrays
        tr, te = split_train_test(labels)
        arrays = [(images[tr], labels[tr]), (images[te], labels[te])]
    (train_x, train_y), (test_x, test_y) = arrays
    return TaskData(root.name, "image", train_x, train_y, test_x, test_y, names)


# ----------------------------------------------------------------------------- datasets / hub
def _labelled(split, label_column: str) -> bool:
    return label_column in split.column_names and min(split[label_column]) >= 0


def hf_task(name: str, splits, text_columns, label_column, where: str) -> TaskData:
    """A task from a ``datasets`` DatasetDict (or one Dataset, split 80/20)."""
    if hasattr(splits, "column_names") and not isinstance(splits.column_names, dict):
        splits = {"train": splits}
    if "train" not in splits:
        raise DataError(f"{where}: no 'train' split; splits present: {sorted(splits)}")
    train = splits["train"]
    columns = list(train.column_names)
    image_column = next((c for c in IMAGE_GUESSES if c in columns), None)
    if label_column is None:
        label_column = next((c for c in LABEL_GUESSES if c in columns), None)
        if label_column is None:
            raise DataError(f"{where}: no label column found among {columns}: pass label_column")
    test_name = next((s for s in TEST_SPLITS if s in splits and _labelled(splits[s], label_column)), None)
    test = splits[test_name] if test_name else None
    feature = getattr(train, "features", {}).get(label_column)
    names = list(feature.names) if hasattr(feature, "names") else None
    logger.info("%s: train split 'train', test split %r", where, test_name or "80/20 of train")
    if image_column is not None and text_columns is None:
        def images(split):
            return _read_pil(split[image_column])
        if test is None:
            x, y = images(train), np.asarray(train[label_column], dtype=np.int64)
            tr, te = split_train_test(y)
            train_x, train_y, test_x, test_y = x[tr], y[tr], x[te], y[te]
        else:
            train_x, test_x = images(train), images(test)
            train_y, test_y = np.asarray(train[label_column]), np.asarray(test[label_column])
        train_y, test_y, label_names = encode_labels(train_y, test_y, where, names)
        return TaskData(name, "image", train_x, train_y, test_x, test_y, label_names)
    return frame_task(name, train.to_pandas(), None if test is None else test.to_pandas(), text_columns,
                      label_column, where, names)


def _read_pil(images) -> np.ndarray:
    mode = "L" if all(im.mode in ("L", "1") for im in images) else "RGB"
    size = images[0].size
    return np.stack([np.asarray(im.convert(mode).resize(size), dtype=np.uint8) for im in images])


def _datasets_module(what: str):
    if find_spec("datasets") is None:
        raise DataError(f"{what} needs the Hugging Face `datasets` package: pip install datasets")
    import datasets

    return datasets


def load_hub(spec: str, *, text_columns=None, label_column=None) -> TaskData:
    """``NAME[:CONFIG]`` from the Hugging Face hub (needs ``datasets`` and internet); ``glue/sst2`` = ``glue:sst2``."""
    datasets = _datasets_module(f"hub data set {spec!r}")
    path, _, config = spec.partition(":")
    if not config and path.split("/")[0] in ("glue", "super_glue") and path.count("/") == 1:
        path, config = path.split("/")
    try:
        splits = datasets.load_dataset(path, config or None)
    except Exception as exc:  # network, unknown name, missing config: all reported the same way
        raise DataError(f"cannot load hub data set {spec!r}: {exc}") from exc
    return hf_task(spec.replace("/", "_").replace(":", "_"), splits, text_columns, label_column, f"hub:{spec}")


def load_path(path: Path, *, text_columns=None, label_column=None) -> TaskData:
    """A task from a table file or a data directory (see the module docstring)."""
    name = path.stem if path.is_file() else path.name
    if path.is_file():
        return frame_task(name, read_table(path), None, text_columns, label_column, str(path))
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        datasets = _datasets_module(f"the `datasets` directory {path}")
        return hf_task(name, datasets.load_from_disk(str(path)), text_columns, label_column, str(path))
    tables = {f.stem.lower(): f for f in sorted(path.iterdir()) if f.suffix.lower() in TABLE_SUFFIXES}
    if "train" in tables:
        test = next((tables[s] for s in TEST_SPLITS if s in tables), None)
        if test is None:
            return frame_task(name, read_table(tables["train"]), None, text_columns, label_column,
                              str(tables["train"]))
        return frame_task(name, read_table(tables["train"]), read_table(test), text_columns, label_column, str(path))
    if any(d.is_dir() for d in path.iterdir()):
        return load_image_folder(path)
    raise DataError(f"{path}: no supported data: expected train.<csv|tsv|json|jsonl|parquet>, a `datasets` "
                    "directory, or image class subfolders")
