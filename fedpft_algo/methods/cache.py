"""The disk cache of aligned proxies (FedPFT's sub-FM, FedOT's emulator), shared by runs and bench cells.

An aligned proxy depends only on the FM's weights and the compression/alignment settings, so it is
cached under a key of (hash of the FM's transformer-layer weights, those settings, the method's own
suffix): a second run with the same FM and settings reuses it instead of distilling again. Only the
tensors alignment changes (e.g. the compressed layers' FFNs and FFN LayerNorms) are cached, as
safetensors. The methods (:mod:`.fedpft`, :mod:`.fedot`) build the proxies and call :func:`load_or_align`.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Optional, Tuple

from safetensors.torch import load_file
from torch import nn

from ..core.alignment import AlignmentReport
from ..core.arch import find_layers
from ..config import FedPFTConfig

logger = logging.getLogger(__name__)

# The method is not part of the key: FedPFT and FedPFT_B align the same sub-FM the same way (and
# share the cache); FedOT's emulator is cached under its own directory and key suffix.
_KEY_FIELDS = ("ffn_keep_ratio", "retained_layers", "layer_align_steps", "layer_align_batch_size",
               "layer_align_lr", "layer_align_warmup_ratio", "layer_align_weight_decay", "align_max_grad_norm",
               "public_dataset", "public_size", "max_length")
# Sub-FM options added later join the key only when they differ from the value every entry cached before
# they existed was built with (the paper's rules), so that those entries keep their keys.
_KEY_FIELDS_IF_SET = {"saliency": "weight", "layer_keep": "uniform", "align_output_weight": 0.0, "precision": "fp32"}


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over the names and bytes of the transformer layers' weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(find_layers(model).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def layer_align_options(config: FedPFTConfig) -> dict:
    """The layer-level alignment budget of ``config`` (the key fields above), as the aligners' keywords."""
    return dict(steps=config.layer_align_steps, lr=config.layer_align_lr,
                weight_decay=config.layer_align_weight_decay, warmup_ratio=config.layer_align_warmup_ratio,
                max_grad_norm=config.align_max_grad_norm, precision=config.precision)


def cache_key(full_model: nn.Module, config: FedPFTConfig, extra: str = "") -> str:
    settings = {name: getattr(config, name) for name in _KEY_FIELDS}
    settings.update({name: getattr(config, name) for name, default in _KEY_FIELDS_IF_SET.items()
                     if getattr(config, name) != default})
    blob = json.dumps([weights_fingerprint(full_model), settings, extra], sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def save_tensors_atomic(model: nn.Module, names, path: Path) -> None:
    """Write ``model``'s tensors ``names`` to ``path`` (safetensors) via a temporary file and a rename,
    so that a crash never leaves a half-written cache entry."""
    from safetensors.torch import save

    from ..files import write_bytes_atomic

    state = model.state_dict()
    write_bytes_atomic(path, save({name: state[name].detach().cpu().contiguous() for name in names}))


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
