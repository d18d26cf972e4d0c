"""What travels between server and clients, and how it is checked.

Server -> client (an ``OrderedDict`` of tensors, FedML's model-parameter message):
  * round 0: every tensor of the sub-FM (frozen weights, LoRA init, head) - never the FM's;
  * later rounds: the aggregated LoRA + head, plus the sub-FM tensors that neuron-level
    alignment changed;
  * control scalars under ``__fedpft__.`` (the round, whether to collect activation counts).
Client -> server: LoRA + head tensors, activation counts in alignment rounds
(``__fedpft_stats__.``) and a few training scalars (``__fedpft_metrics__.``): never data.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Tuple

import torch
from torch import nn

CONTROL_PREFIX = "__fedpft__."
METRICS_PREFIX = "__fedpft_metrics__."
COLLECT_STATS = CONTROL_PREFIX + "collect_stats"
ROUND = CONTROL_PREFIX + "round"


def nbytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Serialised size of the tensor data (what a transport must carry at least)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def split_prefixed(tensors: Mapping[str, torch.Tensor], prefix: str):
    """(tensors without ``prefix``, the ``prefix`` entries with the prefix stripped)."""
    rest = OrderedDict((k, v) for k, v in tensors.items() if not k.startswith(prefix))
    picked = OrderedDict((k[len(prefix):], v) for k, v in tensors.items() if k.startswith(prefix))
    return rest, picked


def control(round_idx: int, collect_stats: bool) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict([(ROUND, torch.tensor([round_idx])), (COLLECT_STATS, torch.tensor([int(collect_stats)]))])


def tied_aliases(state: Mapping[str, torch.Tensor]) -> set:
    """Names whose tensor is the same memory as an earlier name's (tied weights: a decoder's output projection
    is its input embedding matrix). Sending or saving them would carry the same tensor twice."""
    seen, aliases = set(), set()
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        if key in seen:
            aliases.add(name)
        seen.add(key)
    return aliases


def full_state(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """``model``'s state dict without tied aliases (the first payload, a checkpoint)."""
    state = model.state_dict()
    drop = tied_aliases(state)
    return OrderedDict((k, v) for k, v in state.items() if k not in drop)


def load_payload_(model: nn.Module, tensors: Mapping[str, torch.Tensor], *, require_all: bool = False) -> Tuple[str, ...]:
    """Copy received tensors into ``model`` by name with strict name and shape checks.

    ``require_all``: the payload must cover the whole state dict (the first payload, which
    replaces the skeleton's random weights). Returns the names that were loaded.
    """
    own = model.state_dict()
    unknown = [k for k in tensors if k not in own]
    if unknown:
        raise KeyError(f"payload has tensors the model does not: {unknown[:3]}")
    if require_all:
        tied = tied_aliases(own)   # filled through the tensor they alias
        missing = [k for k in own if k not in tensors and k not in tied]
        if missing:
            raise KeyError(f"first payload lacks tensors of the sub-FM: {missing[:3]}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            if tuple(tensor.shape) != tuple(own[name].shape):
                raise ValueError(f"payload tensor {name} has shape {tuple(tensor.shape)}, "
                                 f"model expects {tuple(own[name].shape)}")
            own[name].copy_(tensor)
    return tuple(tensors)
