"""FedPFT: Federated Proxy Fine-Tuning of foundation models, as a FedML 0.9.6 plugin.

Implements Peng et al., "FedPFT: Federated Proxy Fine-Tuning of Foundation Models",
IJCAI 2024 (arXiv 2404.11536). Not Flower's "FedPFT" baseline (parametric feature transfer,
arXiv 2402.01862), which shares the name only.

The server compresses its foundation model (FM) into a sub-FM (all layers kept, FFN neurons
cut by weight saliency), aligns it to the FM by layer-level distillation, clients fine-tune
LoRA + head on the sub-FM, and the server plugs the aggregate back into the FM, re-aligning
the sub-FM by neuron-level distillation every t rounds.

The public names are imported lazily, so ``import fedpft_algo`` (and the command line's
error paths) do not pay for importing ``peft`` and ``transformers``.
"""
import importlib

from . import compat  # noqa: F401  (must run before anything imports fedml or torchvision)
from . import methods  # noqa: F401  (binds the method registry to the config; cheap: built-ins load on use)
from .config import FedPFTConfig
from .errors import ConfigError, DataError, FedPFTError, ModelError

_LAZY = {
    "build_sub_model": "core.compression", "build_sub_model_skeleton": "core.compression",
    "trainable_state": "core.lora", "plug_in_": "core.lora", "add_lora": "core.lora",
    "weighted_average": "core.aggregation", "register_arch": "core.arch", "ArchSpec": "core.arch",
    "register_method": "methods",
}

__all__ = ["FedPFTConfig", "FedPFTError", "ConfigError", "DataError", "ModelError", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
