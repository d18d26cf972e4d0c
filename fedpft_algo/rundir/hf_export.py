"""The tuned LoRA + head as a standard PEFT adapter folder, ``final/adapter/`` of a run directory
(``adapter_config.json`` + ``adapter_model.safetensors``; the LoRA of every attention projection and the
task head, saved from ``modules_to_save``), written by the server next to ``final/trainable.safetensors``::

    base = AutoModelForSequenceClassification.from_pretrained(fm_dir, num_labels=N)
    model = PeftModel.from_pretrained(base, "runs/<run>/final/adapter")

It holds the FM's own parameter names: FedOT runs are saved like FedPFT runs (the server maps the
emulator's layers onto the FM's before it saves). The merged export is :mod:`fedpft_algo.export`.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


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
