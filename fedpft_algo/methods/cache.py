"""The server's pre-round hook: build the sub-FM and align it layer by layer, with a disk cache.

The aligned sub-FM depends only on the FM's weights and the compression/alignment settings, so
it is cached under a key of (hash of the FM's transformer-layer weights, those settings): a
second run with the same FM and settings reuses it instead of distilling again. Only the tensors
alignment changes (the compressed layers' FFNs and FFN LayerNorms) are cached, as safetensors.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

from safetensors.torch import load_file
from torch import nn

from ..core.alignment import AlignmentReport, align_layers_
from ..core.arch import find_layers, num_layers
from ..core.compression import KeepIndex, build_sub_model
from ..config import FedPFTConfig

logger = logging.getLogger(__name__)

# The method is not part of the key: FedPFT and FedPFT_B align the same sub-FM the same way (and
# share the cache); FedOT's emulator is cached under its own directory and key suffix.
_KEY_FIELDS = ("ffn_keep_ratio", "retained_layers", "layer_align_steps", "layer_align_batch_size",
               "layer_align_lr", "layer_align_warmup_ratio", "layer_align_weight_decay", "align_max_grad_norm",
               "public_dataset", "public_size", "max_length")


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over the names and bytes of the transformer layers' weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(find_layers(model).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_key(full_model: nn.Module, config: FedPFTConfig, extra: str = "") -> str:
    settings = {name: getattr(config, name) for name in _KEY_FIELDS}
    blob = json.dumps([weights_fingerprint(full_model), settings, extra], sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def save_tensors_atomic(model: nn.Module, names, path: Path) -> None:
    """Write ``model``'s tensors ``names`` to ``path`` (safetensors) via a temporary file and a rename,
    so that a crash never leaves a half-written cache entry."""
    from safetensors.torch import save

    from ..files import write_bytes_atomic

    state = model.state_dict()
    write_bytes_atomic(path, save({name: state[name].detach().cpu().contiguous() for name in names}))


def prepare_sub_model(full_model: nn.Module, config: FedPFTConfig, public_batches: Sequence, eval_batches: Sequence,
                      *, cache_dir: Optional[Path] = None, cache_extra: str = "",
                      device="cpu") -> Tuple[nn.Module, KeepIndex, Optional[AlignmentReport], bool]:
    """Build the sub-FM and (for methods that use it) align it before FL.

    Returns ``(sub_model, keep_index, report, from_cache)``; ``report`` is ``None`` when no
    alignment ran in this call (disabled, or loaded from the cache).
    """
    if config.method == "fedot":  # Offsite-Tuning's layer-dropped emulator instead of the sub-FM
        from .fedot import prepare_emulator

        return prepare_emulator(full_model, config, public_batches, eval_batches, cache_dir=cache_dir,
                                cache_extra=cache_extra, device=device)
    sub_model, keep_index = build_sub_model(full_model, config)
    if not config.layer_alignment:
        return sub_model, keep_index, None, False
    layers = config.compressed_layers(num_layers(full_model.config))

    def align() -> AlignmentReport:
        full_model.to(device)
        sub_model.to(device)
        return align_layers_(full_model, sub_model, public_batches, eval_batches, layers,
                             steps=config.layer_align_steps, lr=config.layer_align_lr,
                             weight_decay=config.layer_align_weight_decay,
                             warmup_ratio=config.layer_align_warmup_ratio,
                             max_grad_norm=config.align_max_grad_norm, device=device)

    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "sub_models" / f"{cache_key(full_model, config, cache_extra)}.safetensors"
    report, from_cache = load_or_align(sub_model, path, align, "layer-level alignment")
    return sub_model, keep_index, report, from_cache


def load_or_align(model: nn.Module, path: Optional[Path], align: Callable[[], AlignmentReport],
                  what: str) -> Tuple[Optional[AlignmentReport], bool]:
    """Load ``model``'s aligned tensors from the cache file ``path``, or run ``align()`` and cache
    what it changed. Returns ``(report, from_cache)`` (``report`` is ``None`` when loaded).

    Processes sharing the cache (bench cells side by side) take a lock on the entry first, so
    one aligns and the others wait and load its result instead of aligning again.
    """
    if path is None:
        return align(), False
    from ..files import file_lock

    with file_lock(path.with_name(path.name + ".lock")):
        if path.exists():
            missing = model.load_state_dict(load_file(str(path)), strict=False)
            assert not missing.unexpected_keys, f"cached {what} has unknown tensors {missing.unexpected_keys[:3]}"
            logger.info("%s: reusing cached %s", what, path)
            return None, True
        report = align()
        save_tensors_atomic(model, report.changed, path)
        return report, False
