"""Client-side cost options: work a client's training step does that the FFN cut does not shrink.

* ``fedpft_client_backbone_dropout: false`` - the frozen backbone's own dropout (embeddings, attention
  probabilities, hidden states) gets probability 0 on clients: no masks drawn, no masked copies kept for
  the backward pass. LoRA dropout and the task head's dropout stay.
* ``fedpft_shared_lora_dropout: true`` - Q, K and V of a layer read the same input, and peft applies
  ``lora_dropout[adapter](x)`` before each ``lora_A``: one :class:`SharedDropout` module is put in the three
  places, and it reuses the mask (the dropped-out tensor) it computed for that very input tensor, so a
  layer draws one mask instead of three (O reads another input and keeps its own).
* ``fedpft_compile: true`` - :func:`torch.compile` of the client model's forward (compiled once per
  process, on the first step).

The embeddings need no such option: their weights are frozen and their inputs are token ids, so autograd
records nothing for them already (``tests/core/test_client_speed.py`` checks it).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .arch import get_arch


class SharedDropout(nn.Dropout):
    """Dropout that returns the same output for the same input tensor on consecutive calls (training)."""

    def __init__(self, p: float):
        super().__init__(p)
        self._last_input: Optional[torch.Tensor] = None
        self._last_output: Optional[torch.Tensor] = None
        self._last_version = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            self._last_input = self._last_output = None
            return x
        if x is self._last_input and x._version == self._last_version:
            return self._last_output
        out = super().forward(x)
        self._last_input, self._last_output, self._last_version = x, out, x._version
        return out


def _base_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def disable_backbone_dropout_(model: nn.Module) -> int:
    """Set every backbone ``nn.Dropout`` of ``model`` (LoRA-wrapped or not) to p = 0; returns how many.

    Kept: LoRA's dropout, the task head's (the head modules and dropouts directly on the task model)."""
    base = _base_model(model)
    head = set(get_arch(base.config.model_type).head)
    changed = 0
    for name, module in base.named_modules():
        parts = name.split(".")
        if (not isinstance(module, nn.Dropout) or "lora_dropout" in parts or len(parts) == 1
                or parts[0] in head or module.p == 0):
            continue
        module.p = 0.0
        changed += 1
    return changed


def share_qkv_lora_dropout_(model: nn.Module) -> int:
    """Give the Q, K and V LoRA layers of every transformer layer one :class:`SharedDropout`; returns how
    many layers were changed (0 when LoRA dropout is 0 or already shared)."""
    from .arch import find_layers

    base = _base_model(model)
    qkv = get_arch(base.config.model_type).attention[:3]
    shared_layers = 0
    for layer in find_layers(base):
        modules = [layer.get_submodule(path) for path in qkv]
        if not all(hasattr(m, "lora_dropout") for m in modules):
            continue
        for adapter, first in modules[0].lora_dropout.items():
            if isinstance(first, SharedDropout) or not isinstance(first, nn.Dropout) or first.p == 0:
                continue
            shared = SharedDropout(first.p)
            for module in modules:
                module.lora_dropout[adapter] = shared
            shared_layers += 1
    return shared_layers


def apply_client_options_(model: nn.Module, config) -> nn.Module:
    """Apply ``config``'s client-cost options to a client's LoRA-wrapped model (idempotent); returns what to
    call for a training step: the model, or its compiled forward."""
    if not config.client_backbone_dropout:
        disable_backbone_dropout_(model)
    if config.shared_lora_dropout:
        share_qkv_lora_dropout_(model)
    if not config.compile:
        return model
    compiled = getattr(model, "_fedpft_compiled", None)
    if compiled is None:
        compiled = torch.compile(model)
        object.__setattr__(model, "_fedpft_compiled", compiled)  # not a submodule: names stay the same
    return compiled
