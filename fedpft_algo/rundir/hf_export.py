"""The tuned result in Hugging Face's own formats.

* ``final/adapter/``: a standard PEFT adapter folder (``adapter_config.json`` +
  ``adapter_model.safetensors``; the LoRA of every attention projection and the task head, saved
  from ``modules_to_save``), written by the server next to ``final/trainable.safetensors``::

      base = AutoModelForSequenceClassification.from_pretrained(fm_dir, num_labels=N)
      model = PeftModel.from_pretrained(base, "runs/<run>/final/adapter")

* ``fedpft export RUN_DIR --merged OUT``: the FM with the LoRA merged into its weights
  (``merge_and_unload``), its tokenizer and the task's label names (``id2label``/``label2id`` in
  ``config.json``): a standalone model folder for ``AutoModelForSequenceClassification`` and
  ``pipeline("text-classification", model=OUT)``.

Both hold the FM's own parameter names: FedOT runs are exported like FedPFT runs (the server maps
the emulator's layers onto the FM's before it saves). Vision runs get the adapter folder; the
merged export is for text models only (the image preprocessing of the runs has no Hugging Face
image processor to ship with it).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from ..errors import FedPFTError

logger = logging.getLogger(__name__)

ADAPTER_DIR = Path("final") / "adapter"


def save_adapter(model, out: Path) -> Path:
    """Write ``model`` (a ``PeftModel``: the FM with LoRA + head) as a PEFT adapter folder at ``out``.

    Written to a temporary folder beside ``out`` and renamed, so ``out`` is whole or absent.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(str(scratch), safe_serialization=True)
        if out.exists():
            shutil.rmtree(out)
        os.replace(scratch, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("wrote the PEFT adapter folder %s", out)
    return out


def export_merged(run_dir, out) -> Path:
    """Write the merged model of a finished run, with its tokenizer and label names, to the new folder ``out``."""
    from ..data.loaders import is_image_encoder
    from ..inference import load_tuned_model

    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FedPFTError(f"--merged {out}: the directory exists and is not empty; choose a new one")
    model, encoder, label_names = load_tuned_model(run_dir)
    if is_image_encoder(encoder):
        raise FedPFTError(f"--merged: {run_dir} is a vision run; the merged export is for text "
                          f"models: use {Path(run_dir) / ADAPTER_DIR} with PeftModel.from_pretrained")
    merged = model.merge_and_unload().eval()
    _set_label_names(merged.config, label_names)
    created = not out.exists()
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        merged.save_pretrained(str(scratch))
        encoder.save_pretrained(str(scratch))
        if not created:
            out.rmdir()  # empty (checked above)
        os.replace(scratch, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("wrote the merged model %s", out)
    return out


def _set_label_names(model_config, label_names: Optional[list]) -> None:
    """``id2label``/``label2id`` from the run's label names (kept as ``LABEL_i`` when the run has none)."""
    if not label_names or len(label_names) != model_config.num_labels:
        return
    model_config.id2label = {i: str(name) for i, name in enumerate(label_names)}
    model_config.label2id = {str(name): i for i, name in enumerate(label_names)}
