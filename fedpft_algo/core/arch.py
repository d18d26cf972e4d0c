"""Architecture knowledge as data.

One :class:`ArchSpec` per Hugging Face ``config.model_type`` says where a model keeps its
transformer layers and, inside a layer, its attention projections, FFN input/output (and gate,
for gated MLPs), the LayerNorm that belongs to the FFN, and the task head. Every weight here is
an ``nn.Linear`` (PyTorch layout ``out x in``): an FFN neuron ``j`` is row ``j`` of the input
(and gate) projection and column ``j`` of the output projection.

Register another architecture with :func:`register_arch`; nothing else in the package
special-cases a model class.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from torch import nn

from ..errors import ModelError


@dataclass(frozen=True)
class ArchSpec:
    layers: str                        # dotted path (suffix) of the nn.ModuleList of layers
    attention: Tuple[str, ...]         # Q, K, V, O projections, relative to a layer (LoRA targets)
    ffn_in: str                        # d -> d_ff, relative to a layer ("up" for gated MLPs)
    ffn_out: str                       # d_ff -> d
    ffn_norm: Optional[str]            # LayerNorm trained with the FFN during alignment
    head: Tuple[str, ...]              # task-head modules (trained fully by clients)
    ffn_gate: Optional[str] = None     # gated MLPs: second d -> d_ff projection
    ffn_size_attr: str = "intermediate_size"
    num_layers_attr: str = "num_hidden_layers"
    modality: str = "text"             # "image": pixel inputs and an image-classification head
    causal: bool = False               # a decoder (causal LM): tuned as one, through its LM head (tasks)


_REGISTRY: Dict[str, ArchSpec] = {}


def register_arch(model_type: str, spec: ArchSpec, *, overwrite: bool = False) -> None:
    """Teach the package a new ``config.model_type``."""
    if model_type in _REGISTRY and not overwrite:
        raise ValueError(f"model_type {model_type!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[model_type] = spec


def get_arch(model_type: str) -> ArchSpec:
    try:
        return _REGISTRY[model_type]
    except KeyError:
        raise ModelError(
            f"model_type {model_type!r} is not supported (known: {', '.join(sorted(_REGISTRY))}); "
            "register it with fedpft_algo.register_arch(model_type, ArchSpec(...))"
        ) from None


def known_model_types() -> Tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


# Encoder layers in the BERT family: post-LN, FFN = intermediate.dense -> output.dense.
_BERT_ATTENTION = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")

register_arch("bert", ArchSpec(
    layers="encoder.layer", attention=_BERT_ATTENTION,
    ffn_in="intermediate.dense", ffn_out="output.dense", ffn_norm="output.LayerNorm",
    head=("classifier",)))
register_arch("roberta", ArchSpec(
    layers="encoder.layer", attention=_BERT_ATTENTION,
    ffn_in="intermediate.dense", ffn_out="output.dense", ffn_norm="output.LayerNorm",
    head=("classifier",)))
register_arch("mpnet", ArchSpec(
    layers="encoder.layer", attention=("attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o"),
    ffn_in="intermediate.dense", ffn_out="output.dense", ffn_norm="output.LayerNorm",
    head=("classifier",)))
register_arch("distilbert", ArchSpec(
    layers="transformer.layer", attention=("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin"),
    ffn_in="ffn.lin1", ffn_out="ffn.lin2", ffn_norm="output_layer_norm",
    head=("pre_classifier", "classifier"), ffn_size_attr="hidden_dim", num_layers_attr="n_layers"))
# ViT is pre-LN: layernorm_after normalises the FFN's input. transformers 5 renamed ViT's modules
# (vit.layers.N.attention.q_proj, mlp.fc1/fc2); older releases use BERT's names.
def _vit_spec() -> ArchSpec:
    from transformers.models.vit import modeling_vit

    if hasattr(modeling_vit, "ViTMLP"):
        return ArchSpec(
            layers="layers", attention=("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"),
            ffn_in="mlp.fc1", ffn_out="mlp.fc2", ffn_norm="layernorm_after", head=("classifier",), modality="image")
    return ArchSpec(
        layers="encoder.layer",
        attention=("attention.attention.query", "attention.attention.key", "attention.attention.value",
                   "attention.output.dense"),
        ffn_in="intermediate.dense", ffn_out="output.dense", ffn_norm="layernorm_after",
        head=("classifier",), modality="image")


register_arch("vit", _vit_spec())
# LLaMA-style gated MLP: down(act(gate(x)) * up(x)); a neuron is a row of gate and up, a column of down.
register_arch("llama", ArchSpec(
    layers="layers", attention=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    ffn_in="mlp.up_proj", ffn_gate="mlp.gate_proj", ffn_out="mlp.down_proj", ffn_norm="post_attention_layernorm",
    head=("score",), causal=True))


# ---------------------------------------------------------------------- locating modules
def arch_of(model: nn.Module) -> ArchSpec:
    return get_arch(model.config.model_type)


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer layers, through any wrapper (task head, PEFT)."""
    spec = arch_of(model)
    suffix = "." + spec.layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (name == spec.layers or name.endswith(suffix)):
            return module
    raise ModelError(f"no module list {spec.layers!r} in this {model.config.model_type} model")


def layer_linear(layer: nn.Module, path: str) -> nn.Linear:
    module = layer.get_submodule(path)
    # PEFT wraps targeted Linears; FFN modules are never LoRA targets, so this must be plain.
    assert isinstance(module, nn.Linear), f"{path} is {type(module).__name__}, expected nn.Linear"
    return module


def set_layer_module(layer: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = layer.get_submodule(parent_path) if parent_path else layer
    setattr(parent, child, module)


def is_decoder(model_config) -> bool:
    """Whether the model is a decoder (causal LM): its registry entry says so, or its config does
    (``is_decoder``, an ``...ForCausalLM`` architecture)."""
    spec = _REGISTRY.get(model_config.model_type)
    if spec is not None and spec.causal:
        return True
    architectures = getattr(model_config, "architectures", None) or ()
    return bool(getattr(model_config, "is_decoder", False)) or any(a.endswith("ForCausalLM") for a in architectures)


def model_class_for(model_config, causal_lm: bool = False):
    """The ``transformers`` auto class: the causal LM with its own output projection when ``causal_lm``
    (decoders tuned on instruction or language-modelling tasks, :mod:`fedpft_algo.tasks`), else the one
    with a classification head: image classification for image models, sequence classification for
    everything else (an architecture the registry does not know included)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageClassification, AutoModelForSequenceClassification

    if causal_lm:
        return AutoModelForCausalLM
    spec = _REGISTRY.get(model_config.model_type)
    return AutoModelForImageClassification if spec and spec.modality == "image" else AutoModelForSequenceClassification


def num_layers(model_config) -> int:
    return int(getattr(model_config, get_arch(model_config.model_type).num_layers_attr))


def ffn_size(model_config) -> int:
    return int(getattr(model_config, get_arch(model_config.model_type).ffn_size_attr))
