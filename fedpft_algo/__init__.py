"""FedPFT: Federated Proxy Fine-Tuning of foundation models, as a FedML 0.9.6 plugin.

Implements Peng et al., "FedPFT: Federated Proxy Fine-Tuning of Foundation Models",
IJCAI 2024 (arXiv 2404.11536). Not Flower's "FedPFT" baseline (parametric feature transfer,
arXiv 2402.01862), which shares the name only.

The server compresses its foundation model (FM) into a sub-FM (all layers kept, FFN neurons
cut by weight saliency), aligns it to the FM by layer-level distillation, clients fine-tune
LoRA + head on the sub-FM, and the server plugs the aggregate back into the FM, re-aligning
the sub-FM by neuron-level distillation every t rounds.
"""
from . import compat  # noqa: F401  (must run before anything imports fedml or torchvision)
from .aggregation import weighted_average
from .compression import build_sub_model, build_sub_model_skeleton
from .config import FedPFTConfig
from .errors import ConfigError, DataError, FedPFTError, ModelError
from .lora import add_lora, plug_in_, trainable_state

__all__ = [
    "FedPFTConfig", "build_sub_model", "build_sub_model_skeleton", "trainable_state", "plug_in_", "add_lora",
    "weighted_average", "FedPFTError", "ConfigError", "DataError", "ModelError",
]
__version__ = "0.1.0"
