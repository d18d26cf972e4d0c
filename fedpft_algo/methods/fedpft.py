"""FedPFT (Peng et al., IJCAI 2024), its ablations, and FedPETuning.

* :class:`FedPFT`: clients hold the sub-FM (every layer kept, the FFNs of the compressed layers cut by
  weight saliency, :mod:`fedpft_algo.core.compression`), aligned to the FM layer by layer before FL
  and neuron by neuron every t rounds. Its fields switch the alignments off for the paper's ablations:
  FedPFT_N (neither), FedPFT_B (before FL only), FedPFT_D (during FL only).
* :class:`FedPETuning`: the same LoRA + head fine-tuning with the FM itself on clients (the paper's
  upper reference, "with full model").

The layer-aligned sub-FM depends only on the FM's weights and the compression/alignment settings, so
it is cached (:mod:`.cache`): FedPFT and FedPFT_B share the entry.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from ..core.alignment import align_layers_
from ..core.arch import num_layers
from ..core.compression import build_sub_model, build_sub_model_skeleton
from .base import Method, Proxy
from .cache import cache_key, layer_align_options, load_or_align


@dataclass(frozen=True)
class FedPFT(Method):
    """The sub-FM as proxy; ``layer_level`` / ``neuron_level``: which of the two alignments run."""

    layer_level: bool = True
    neuron_level: bool = True

    client_kind = "sub_model"

    def layer_alignment(self, config) -> bool:
        return self.layer_level and config.layer_align_steps > 0

    def neuron_alignment(self, config) -> bool:
        return self.neuron_level and config.neuron_align_steps > 0

    def build_proxy(self, full_model, config, public_batches, eval_batches, *, cache_dir=None, cache_extra="",
                    device="cpu") -> Proxy:
        sub_model, _ = build_sub_model(full_model, config, public_batches, device=device)
        if not self.layer_alignment(config):
            return Proxy(sub_model)
        layers = config.compressed_layers(num_layers(full_model.config))

        def align():
            full_model.to(device)
            sub_model.to(device)
            return align_layers_(full_model, sub_model, public_batches, eval_batches, layers,
                                 **layer_align_options(config), device=device,
                                 output_weight=config.align_output_weight)

        path = None
        if cache_dir is not None:
            path = Path(cache_dir) / "sub_models" / f"{cache_key(full_model, config, cache_extra)}.safetensors"
        report, from_cache = load_or_align(sub_model, path, align, "layer-level alignment")
        return Proxy(sub_model, report, from_cache)

    def client_skeleton(self, model_config, config, *, model_class):
        return build_sub_model_skeleton(model_config, config, model_class=model_class)


@dataclass(frozen=True)
class FedPETuning(Method):
    """Clients hold the FM itself: the proxy is a copy of it, nothing is compressed or aligned."""

    client_kind = "full_lora"
    uses_proxy = False

    def build_proxy(self, full_model, config, public_batches, eval_batches, *, cache_dir=None, cache_extra="",
                    device="cpu") -> Proxy:
        return Proxy(copy.deepcopy(full_model))

    def client_skeleton(self, model_config, config, *, model_class):
        return model_class.from_config(model_config)
