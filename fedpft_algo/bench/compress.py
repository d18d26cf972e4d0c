"""``fedpft compress``: build and layer-align a sub-FM and report what it costs and how close it is.

Prints and writes (``compress_report.json``): parameters of FM and sub-FM (total and
transformer layers), the per-token FLOP ratio of the transformer layers, the per-layer
normalised distillation loss before and after layer-level alignment, and wall times.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import torch

from ..core.compression import build_sub_model, count_parameters, encoder_parameters, flops_per_token
from ..config import FedPFTConfig
from ..core.alignment import align_layers_
from ..methods.cache import layer_align_options
from ..core.arch import num_layers


def compress_report(model: str = "minilm-l6", *, dataset: str = "rotten_tomatoes", config: Optional[FedPFTConfig] = None,
                    seed: int = 0, out: Optional[Path] = None, cache_dir: Optional[Path] = None) -> dict:
    from ..data.loaders import encode_inputs, make_collator, make_loader
    from ..data.public import default_public_name, load_public
    from ..data.tasks import load_task
    from ..models import load_encoder, load_full_model, load_model_config

    config = config or FedPFTConfig()
    start = time.perf_counter()
    torch.manual_seed(seed)
    task = load_task(dataset, max_train=200, max_test=50, seed=seed)
    model_config = load_model_config(model, task.num_labels, cache_dir)
    full_model = load_full_model(model, task.num_labels, cache_dir)
    encoder = load_encoder(model, model_config, cache_dir)
    public = load_public(config.public_dataset, task=task, max_examples=config.public_size, seed=seed)
    features = encode_inputs(encoder, public, config.max_length, str(cache_dir / "features") if cache_dir else None)
    collator = make_collator(encoder)
    n_eval = min(len(features) // 5, 4 * config.layer_align_batch_size)
    eval_batches = list(make_loader(features, indices=range(n_eval), collator=collator,
                                    batch_size=config.layer_align_batch_size))
    train = make_loader(features, indices=range(n_eval, len(features)), collator=collator,
                        batch_size=config.layer_align_batch_size, shuffle=True, seed=seed)
    built = time.perf_counter()
    sub_model, keep_index = build_sub_model(full_model, config, train)
    build_seconds = time.perf_counter() - built
    layers = config.compressed_layers(num_layers(full_model.config))
    report = align_layers_(full_model, sub_model, train, eval_batches, layers, **layer_align_options(config),
                           output_weight=config.align_output_weight)
    seq = config.max_length
    result = {
        "model": model, "model_type": full_model.config.model_type, "public_dataset": config.public_dataset or default_public_name(task),
        "public_examples": len(features), "config": config.to_dict(),
        "parameters": {"full_model": count_parameters(full_model), "sub_model": count_parameters(sub_model),
                       "full_encoder": encoder_parameters(full_model), "sub_encoder": encoder_parameters(sub_model)},
        "flops_per_token_ratio": flops_per_token(sub_model, seq) / flops_per_token(full_model, seq),
        "kept_neurons": {str(k): len(v) for k, v in keep_index.items()},
        "layer_loss_before": {str(k): v for k, v in report.loss_before.items()},
        "layer_loss_after": {str(k): v for k, v in report.loss_after.items()},
        "layer_loss_mean_before": report.mean_before, "layer_loss_mean_after": report.mean_after,
        "output_loss_before": report.output_before, "output_loss_after": report.output_after,
        "alignment_steps": report.steps, "alignment_seconds": report.seconds,
        "build_seconds": build_seconds, "wall_seconds": time.perf_counter() - start,
    }
    result["parameters"]["encoder_ratio"] = result["parameters"]["sub_encoder"] / result["parameters"]["full_encoder"]
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compress_report.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def format_report(result: dict) -> str:
    p = result["parameters"]
    lines = [
        f"model {result['model']} ({result['model_type']}), keep ratio {result['config']['ffn_keep_ratio']}, "
        f"retained layers {result['config']['retained_layers']}",
        f"parameters      FM {p['full_model']:,}   sub-FM {p['sub_model']:,}",
        f"encoder params  FM {p['full_encoder']:,}   sub-FM {p['sub_encoder']:,}   ratio {p['encoder_ratio']:.3f}",
        f"FLOPs/token ratio (layers, seq {result['config']['max_length']}): {result['flops_per_token_ratio']:.3f}",
        f"layer-level alignment: {result['alignment_steps']} steps on {result['public_examples']} public examples "
        f"({result['public_dataset']}), {result['alignment_seconds']:.1f}s",
        "layer  loss before  loss after",
    ]
    for layer, before in result["layer_loss_before"].items():
        lines.append(f"{layer:>5}  {before:11.4f}  {result['layer_loss_after'][layer]:10.4f}")
    lines.append(f" mean  {result['layer_loss_mean_before']:11.4f}  {result['layer_loss_mean_after']:10.4f}")
    lines.append(f"final hidden state loss {result['output_loss_before']:.4f} -> {result['output_loss_after']:.4f}")
    lines.append(f"wall time {result['wall_seconds']:.1f}s")
    return "\n".join(lines)
