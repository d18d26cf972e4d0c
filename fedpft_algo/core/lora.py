"""LoRA (via ``peft``) on FM and sub-FM with identical parameter names, and the plug-in.

Clients tune LoRA adapters on attention Q, K, V, O of every layer plus the whole task head.
Attention shapes are the same in FM and sub-FM, so the same ``LoraConfig`` gives both models
the same trainable parameter names; :func:`plug_in_` loads the aggregated tensors into the FM.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from .arch import get_arch
from ..config import FedPFTConfig

_TRAINABLE_MARKERS = ("lora_A.", "lora_B.", ".modules_to_save.")


def lora_config(model_type: str, config: FedPFTConfig, model: nn.Module = None) -> LoraConfig:
    """LoRA on the attention projections + the task head as a module to save. Given ``model``, only the
    head modules it has: a causal LM has none (its output projection, tied to the input embeddings,
    stays frozen and is never uploaded)."""
    spec = get_arch(model_type)
    head = list(spec.head)
    if model is not None:
        names = [name for name, _ in model.named_modules()]
        head = [h for h in head if any(n == h or n.endswith("." + h) for n in names)]
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(spec.attention),
        modules_to_save=head or None,
        bias="none",
    )


def add_lora(model: nn.Module, config: FedPFTConfig) -> PeftModel:
    """Wrap ``model`` with LoRA adapters; only adapters and the head stay trainable."""
    return get_peft_model(model, lora_config(model.config.model_type, config, model))


def is_trainable_name(name: str) -> bool:
    return any(marker in name for marker in _TRAINABLE_MARKERS)


def trainable_state(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """Only the LoRA + head tensors (detached CPU copies), in a stable order."""
    state = OrderedDict(
        (name, tensor.detach().to("cpu", copy=True))
        for name, tensor in model.state_dict().items()
        if is_trainable_name(name)
    )
    assert state, "model has no LoRA/head tensors: wrap it with add_lora first"
    return state


def plug_in_(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load LoRA + head tensors into ``model`` (FM or sub-FM) in place, with strict checks.

    Every key must be a LoRA/head tensor the model has, with the same shape; every LoRA/head
    tensor of the model must be given. Nothing else of the model changes.
    """
    own = {name: t for name, t in model.state_dict().items() if is_trainable_name(name)}
    unknown = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if unknown or missing:
        raise KeyError(f"plug-in keys do not match the model: unknown {unknown[:3]}, missing {missing[:3]}")
    copy_checked_(own, state, "model")


def copy_checked_(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], holder: str) -> None:
    """Copy every tensor of ``state`` into the same-named tensor of ``own`` (state_dict tensors, which share
    storage with the parameters) after checking every shape first: all or nothing."""
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise ValueError(f"plug-in shape mismatch for {name}: got {tuple(tensor.shape)}, "
                             f"{holder} has {tuple(own[name].shape)}")
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor)


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute every transformer layer's activations in the backward pass instead of keeping them.

    ``torch.utils.checkpoint`` (non-reentrant: frozen inputs need no ``requires_grad``, dropout is
    replayed from the saved RNG state) around each layer's ``forward``, in place, so parameter names do
    not change. It is what transformers' ``gradient_checkpointing_enable`` does, for every architecture
    of the registry: transformers refuses it for MPNet. Active only in training mode with gradients on.
    Returns the number of layers wrapped now (0 when already enabled).
    """
    from torch.utils.checkpoint import checkpoint

    from .arch import find_layers

    wrapped = 0
    for layer in find_layers(model):
        if getattr(layer, "_fedpft_checkpointed", False):
            continue
        forward = layer.forward

        def checkpointed(*args, _forward=forward, _layer=layer, **kwargs):
            if _layer.training and torch.is_grad_enabled():
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        layer.forward = checkpointed
        layer._fedpft_checkpointed = True
        wrapped += 1
    return wrapped
