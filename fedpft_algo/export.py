"""``fedpft export RUN_DIR --merged OUT``: the FM with the run's LoRA merged into its weights
(``merge_and_unload``), its tokenizer and the task's label names (``id2label``/``label2id`` in
``config.json``): a standalone model folder for ``AutoModelForSequenceClassification`` and
``pipeline("text-classification", model=OUT)``.

Text models only: vision runs have no Hugging Face image processor to ship with the model; their
``final/adapter/`` folder (:mod:`fedpft_algo.rundir.hf_export`) loads with ``PeftModel.from_pretrained``.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from .errors import FedPFTError
from .rundir.layout import RunDir

logger = logging.getLogger(__name__)


def export_merged(run_dir, out) -> Path:
    """Write the merged model of a finished run, with its tokenizer and label names, to the new folder ``out``."""
    from .data.loaders import is_image_encoder
    from .inference import load_tuned_model

    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FedPFTError(f"--merged {out}: the directory exists and is not empty; choose a new one")
    model, encoder, label_names = load_tuned_model(run_dir)
    if is_image_encoder(encoder):
        raise FedPFTError(f"--merged: {run_dir} is a vision run; the merged export is for text "
                          f"models: use {RunDir(Path(run_dir)).final_adapter} with PeftModel.from_pretrained")
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
