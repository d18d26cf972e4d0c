"""Using a finished run: the FM with the tuned LoRA + head plugged in.

    from fedpft_algo.inference import load_tuned_model, predict
    model, encoder, label_names = load_tuned_model("runs/simulation_mpi-...")
    predict(model, encoder, ["a gripping, beautifully acted film"])

or from the shell: ``fedpft predict RUN_DIR "some text" ...``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Sequence, Tuple

import torch
from safetensors.torch import load_file

from .config import FedPFTConfig, flatten, read_config
from .errors import FedPFTError
from .rundir.layout import RunDir


def load_tuned_model(run_dir, device="cpu") -> Tuple[torch.nn.Module, object, List[str]]:
    """``(model, tokenizer or image config, label names)`` for a finished run directory."""
    from .core.lora import add_lora, plug_in_
    from .models import load_encoder, load_full_model, load_model_config

    run_dir = RunDir(Path(run_dir))
    weights = run_dir.final_weights
    if not weights.exists():
        raise FedPFTError(f"{weights} does not exist: not a finished fedpft run directory")
    flat = flatten(read_config(run_dir.config))
    config = FedPFTConfig.from_flat(flat)
    state = load_file(str(weights))
    label_names = _label_names(run_dir)
    head_bias = [v for k, v in state.items() if "modules_to_save" in k and k.endswith("bias")][-1]
    model_name = str(flat.get("model", "minilm-l6"))
    torch.manual_seed(0)
    model = add_lora(load_full_model(model_name, int(head_bias.shape[0])), config)
    plug_in_(model, state)
    model_config = load_model_config(model_name, int(head_bias.shape[0]))
    encoder = load_encoder(model_name, model_config)
    return model.to(device).eval(), encoder, label_names


def _label_names(run_dir: RunDir) -> List[str]:
    partition = run_dir.partition_json
    if partition.exists():
        rows = json.loads(partition.read_text(encoding="utf-8"))
        if rows and isinstance(rows[0].get("label_counts"), dict):
            return list(rows[0]["label_counts"].keys())
    return []


@torch.no_grad()
def predict(model, tokenizer, texts: Sequence[str], max_length: int = 128) -> List[int]:
    batch = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
    return model(**batch).logits.argmax(dim=-1).tolist()
