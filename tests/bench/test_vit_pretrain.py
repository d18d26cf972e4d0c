"""The vision FM: pre-training a small ViT, saving it as a Hugging Face directory, and FedPFT on it.

One tiny pre-training (scikit-learn digits, 8x8, hidden 32, 4 layers, 3 epochs: about a second)
is shared by the module; every FedPFT step then runs on the directory exactly as on a real
``google/vit-base-*`` one.
"""
import argparse
import copy
import json

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForImageClassification

from fedpft_algo.bench import vit_pretrain as vision
from fedpft_algo.core.alignment import align_layers_
from fedpft_algo.core.compression import build_sub_model, build_sub_model_skeleton, ffn_widths
from fedpft_algo.config import FedPFTConfig
from fedpft_algo.data.loaders import ImageCollator, image_spec, make_loader
from fedpft_algo.data.tasks import load_task
from fedpft_algo.errors import ConfigError, DataError, ModelError
from fedpft_algo.core.lora import add_lora, plug_in_, trainable_state
from fedpft_algo.models import load_full_model
from fedpft_algo.core.stats import ActivationStatistics

TINY = dict(dataset="digits", epochs=3, image_size=8, patch_size=4, hidden_size=32, num_layers=4, num_heads=2,
            ffn_ratio=4, batch_size=32, lr=3e-3, max_shift=0, seed=0, threads=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and a busy machine makes more threads much slower."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("vision") / "vit-tiny"
    report = vision.pretrain_vit(out, **TINY)
    return out, report


@pytest.fixture(scope="module")
def digits():
    return load_task("digits")


def _pixels(model_config, images: np.ndarray) -> torch.Tensor:
    return ImageCollator(image_spec(model_config))([{"image": im} for im in images])["pixel_values"]


def _logits(model, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(pixel_values=pixel_values).logits


# ---------------------------------------------------------------------- pre-training and the directory
def test_pretrain_vit_writes_a_complete_model_directory(vit_dir):
    out, report = vit_dir

    assert sorted(p.name for p in out.iterdir()) == ["config.json", "fedpft_pretrain.json", "model.safetensors",
                                                     "preprocessor_config.json"]
    assert json.loads((out / vision.PRETRAIN_FILE).read_text()) == report
    assert report["dataset"] == "digits" and report["train_examples"] == 1437 and report["seed"] == 0
    config = AutoConfig.from_pretrained(out)
    assert (config.model_type, config.image_size, config.num_channels, config.intermediate_size) == ("vit", 8, 1, 128)
    assert config.id2label[3] == "3"
    assert not list(out.parent.glob(".vit-tiny.*"))  # no temporary directory left behind


def test_pretrain_vit_learns_and_reloads_with_its_reported_accuracy(vit_dir, digits):
    out, report = vit_dir
    model = AutoModelForImageClassification.from_pretrained(out)

    accuracy = vision.accuracy(model, digits.test_inputs, digits.test_labels, ImageCollator(image_spec(model.config)))

    assert round(accuracy, 4) == report["test_accuracy"]
    assert report["test_accuracy"] > report["test_accuracy_before"] + 0.2  # 10 classes: chance is 0.1


def test_saved_vit_gives_the_same_logits_after_from_pretrained(tmp_path, digits):
    from transformers import ViTForImageClassification

    config = vision.vit_config(image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_layers=2, num_heads=2,
                               ffn_ratio=4, label_names=list("0123456789"))
    torch.manual_seed(0)
    model = ViTForImageClassification(config).eval()
    pixels = _pixels(model.config, digits.test_inputs[:8])

    vision.save_pretrained_atomic(model, tmp_path / "vit", {"note": "random init"})
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "vit")

    assert torch.equal(_logits(reloaded, pixels), _logits(model, pixels))


def test_saved_image_processor_matches_the_configs_preprocessing(vit_dir, digits):
    from transformers import AutoImageProcessor

    out, _ = vit_dir
    processor = AutoImageProcessor.from_pretrained(out)
    config = AutoConfig.from_pretrained(out)
    images = digits.test_inputs[:4]

    theirs = processor(images=list(images[..., None]), input_data_format="channels_last",
                       return_tensors="pt")["pixel_values"]

    assert image_spec(processor) == image_spec(config)
    torch.testing.assert_close(theirs, _pixels(config, images), atol=1e-6, rtol=0)


def test_cli_pretrain_vit_parses_and_runs(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    vision.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "m"), "--dataset", "digits", "--epochs", "1", "--image-size",
                              "8", "--patch-size", "4", "--hidden-size", "16", "--num-layers", "2", "--num-heads",
                              "2", "--max-train", "64", "--threads", "1"])

    assert vision.run(args) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert "test accuracy" in capsys.readouterr().out


# ---------------------------------------------------------------------- FedPFT on the pre-trained ViT
@pytest.fixture(scope="module")
def fm_and_sub(vit_dir):
    out, _ = vit_dir
    torch.manual_seed(0)
    fm = load_full_model(str(out), num_labels=10)
    sub, keep = build_sub_model(fm, FedPFTConfig(ffn_keep_ratio=0.25, retained_layers=(0, -1)))
    return fm, sub, keep


def test_build_sub_model_compresses_the_pretrained_vit(fm_and_sub, digits):
    fm, sub, keep = fm_and_sub
    pixels = _pixels(fm.config, digits.test_inputs[:8])

    assert ffn_widths(fm) == [128] * 4
    assert ffn_widths(sub) == [128, 32, 32, 128]
    assert sorted(keep) == [1, 2]
    assert not torch.allclose(_logits(sub, pixels), _logits(fm, pixels))


def test_build_sub_model_with_ratio_one_gives_identical_logits(fm_and_sub, digits):
    fm, _, _ = fm_and_sub
    pixels = _pixels(fm.config, digits.test_inputs[:8])

    whole, keep = build_sub_model(fm, FedPFTConfig(ffn_keep_ratio=1.0))

    assert keep == {}
    assert torch.equal(_logits(whole, pixels), _logits(fm, pixels))


def test_sub_model_skeleton_loads_the_sub_fm_strictly(fm_and_sub, digits):
    _, sub, _ = fm_and_sub
    pixels = _pixels(sub.config, digits.test_inputs[:8])

    skeleton = build_sub_model_skeleton(copy.deepcopy(sub.config))
    skeleton.load_state_dict(sub.state_dict(), strict=True)

    assert torch.equal(_logits(skeleton, pixels), _logits(sub, pixels))


def test_lora_state_of_the_sub_fm_plugs_into_the_fm(fm_and_sub, digits):
    fm, sub, _ = fm_and_sub
    config = FedPFTConfig()
    full_lora, sub_lora = add_lora(copy.deepcopy(fm), config), add_lora(copy.deepcopy(sub), config)
    with torch.no_grad():  # a "trained" client update: every LoRA/head tensor moves
        for name, p in sub_lora.named_parameters():
            if p.requires_grad:
                p.add_(0.01)
    state = trainable_state(sub_lora)

    plug_in_(full_lora, state)

    assert any(".q_proj.lora_A." in name for name in state) and any("classifier" in name for name in state)
    assert all(torch.equal(tensor, trainable_state(full_lora)[name]) for name, tensor in state.items())


def test_layer_alignment_on_unlabelled_images_of_another_set_lowers_the_loss(fm_and_sub, digits):
    from fedpft_algo.data.public import load_public

    fm, sub, keep = fm_and_sub
    try:
        public = load_public(None, task=digits, max_examples=96)  # Fashion-MNIST or MNIST, fitted to 8x8
    except DataError as exc:
        pytest.skip(str(exc))
    collator = ImageCollator(image_spec(fm.config))
    batches = list(make_loader(public, collator=collator, batch_size=16))
    student = copy.deepcopy(sub)

    report = align_layers_(fm, student, batches[1:], batches[:1], sorted(keep), steps=15, lr=3e-3)

    assert report.mean_after < report.mean_before
    assert all(".mlp." in name or ".layernorm_after." in name for name in report.changed)


def test_activation_statistics_count_every_patch_position(fm_and_sub, digits):
    _, sub, keep = fm_and_sub
    pixels = _pixels(sub.config, digits.test_inputs[:5])

    with ActivationStatistics(sub, sorted(keep)) as stats:  # mask None: vision has no padding
        _logits(sub, pixels)
    counts = stats.counts()

    positions = 5 * ((8 // 4) ** 2 + 1)  # patches + [CLS]
    assert counts["__fedpft_stats__.1.positions"].item() == positions
    assert counts["__fedpft_stats__.2.abs_sum"].shape == (32,)


def test_load_full_model_gives_a_fresh_head_for_other_labels(vit_dir):
    out, _ = vit_dir

    model = load_full_model(str(out), num_labels=3)  # the checkpoint's head has 10 classes

    assert model.classifier.weight.shape == (3, 32)
    assert torch.count_nonzero(model.classifier.bias) == 0  # freshly initialised


def test_load_full_model_refuses_a_checkpoint_that_does_not_fit_its_config(vit_dir, tmp_path):
    import shutil

    out, _ = vit_dir
    broken = shutil.copytree(out, tmp_path / "broken")
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "image_size": 16}))  # 16 patches, weights hold 4

    with pytest.raises(ModelError, match=r"position_embeddings does not fit its config.json"):
        load_full_model(str(broken), num_labels=10)


# ---------------------------------------------------------------------- bad input
def _text_csv(path):
    path.write_text("text,label\n" + "".join(f"example number {i},{i % 2}\n" for i in range(20)))
    return str(path)


@pytest.mark.parametrize("kwargs, error, match", [
    (lambda p: dict(dataset="no_such_set"), DataError, r"no_such_set"),
    (lambda p: dict(dataset=_text_csv(p / "t.csv")), DataError, r"is text, not images"),
    (lambda p: dict(epochs=0), ConfigError, r"epochs must be an integer >= 1, got 0"),
    (lambda p: dict(lr=-1.0), ConfigError, r"lr must be a number > 0, got -1.0"),
    (lambda p: dict(threads=0), ConfigError, r"threads must be an integer >= 1, got 0"),
    (lambda p: dict(image_size=8, patch_size=3), ConfigError, r"patch_size 3 does not divide image_size 8"),
    (lambda p: dict(image_size=8, patch_size=4, hidden_size=30, num_heads=4), ConfigError,
     r"num_heads 4 does not divide hidden_size 30"),
])
def test_pretrain_vit_bad_input_raises(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        vision.pretrain_vit(tmp_path / "out", **{**TINY, "epochs": 1, **kwargs(tmp_path)})
    assert not (tmp_path / "out").exists()


def test_pretrain_vit_into_a_non_empty_directory_raises(tmp_path):
    (tmp_path / "old.txt").write_text("keep me")

    with pytest.raises(ConfigError, match=r"exists and is not empty"):
        vision.pretrain_vit(tmp_path, **TINY)
    assert [p.name for p in tmp_path.iterdir()] == ["old.txt"]


def test_pretrain_vit_failing_to_save_leaves_nothing(tmp_path, monkeypatch):
    def broken(config):
        raise OSError("disk full")

    monkeypatch.setattr(vision, "image_processor_for", broken)

    with pytest.raises(OSError, match="disk full"):
        vision.pretrain_vit(tmp_path / "out", **{**TINY, "epochs": 1, "max_train": 32})
    assert list(tmp_path.iterdir()) == []
