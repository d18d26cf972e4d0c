"""Sub-FM construction: layer-wise FFN compression by weight saliency (FedPFT §3.1).

Every layer of the FM is kept, so layer ``l`` of the sub-FM corresponds 1:1 to layer ``l`` of
the FM. Retained layers are copied whole; every other layer keeps its attention unchanged and
keeps the ``k = ratio * d_ff`` FFN neurons of highest saliency

    s_j = || [W_in[j, :], W_gate[j, :], W_out[:, j]] ||_2        (weights only, no data),

in ascending original index order. The FFN output bias and LayerNorm stay whole.
The per-layer FFN widths are stored on the sub-FM's config (``fedpft_ffn_widths``) so that a
client can build the same skeleton from configuration alone and load tensors it receives.
"""
from __future__ import annotations

import copy
import itertools
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .arch import ArchSpec, arch_of, ffn_size, find_layers, get_arch, layer_linear, num_layers, set_layer_module
from ..config import FedPFTConfig

logger = logging.getLogger(__name__)

WIDTHS_ATTR = "fedpft_ffn_widths"

KeepIndex = Dict[int, torch.Tensor]


def neuron_saliency(w_in: torch.Tensor, w_out: torch.Tensor, w_gate: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Saliency of each FFN neuron from ``nn.Linear`` weights: ``w_in`` is (d_ff, d), ``w_out`` (d, d_ff)."""
    assert w_in.shape[0] == w_out.shape[1], f"FFN shapes disagree: in {tuple(w_in.shape)}, out {tuple(w_out.shape)}"
    squared = w_in.float().pow(2).sum(dim=1) + w_out.float().pow(2).sum(dim=0)
    if w_gate is not None:
        assert w_gate.shape == w_in.shape, "gate and up projections must have the same shape"
        squared = squared + w_gate.float().pow(2).sum(dim=1)
    return squared.sqrt()


def select_neurons(saliency: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` most salient neurons, sorted ascending (original order preserved)."""
    assert 0 < k <= saliency.numel(), f"cannot keep {k} of {saliency.numel()} neurons"
    return torch.topk(saliency, k, sorted=False).indices.sort().values


def kept_width(config: FedPFTConfig, d_ff: int) -> int:
    return max(1, int(round(config.ffn_keep_ratio * d_ff)))


def sub_model_widths(model_config, config: FedPFTConfig) -> List[int]:
    """FFN width of every layer of the sub-FM, from shapes alone."""
    d_ff = ffn_size(model_config)
    compressed = set(config.compressed_layers(num_layers(model_config)))
    return [kept_width(config, d_ff) if i in compressed else d_ff for i in range(num_layers(model_config))]


def _ffn_linears(layer: nn.Module, spec: ArchSpec) -> List[Tuple[str, nn.Linear, int]]:
    """(path, module, neuron axis of its weight) for every FFN projection of a layer."""
    items = [(spec.ffn_in, layer_linear(layer, spec.ffn_in), 0), (spec.ffn_out, layer_linear(layer, spec.ffn_out), 1)]
    if spec.ffn_gate:
        items.append((spec.ffn_gate, layer_linear(layer, spec.ffn_gate), 0))
    return items


def _sliced_linear(linear: nn.Linear, index: torch.Tensor, axis: int) -> nn.Linear:
    """A new Linear holding ``index`` of the neuron axis (0: output rows, 1: input columns)."""
    index = index.to(linear.weight.device)
    weight = linear.weight.detach().index_select(axis, index)
    has_bias = linear.bias is not None
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if has_bias:
            # the input projection's bias is per neuron; the output projection's is per hidden unit
            out.bias.copy_(linear.bias.detach().index_select(0, index) if axis == 0 else linear.bias.detach())
    out.weight.requires_grad_(linear.weight.requires_grad)
    if has_bias:
        out.bias.requires_grad_(linear.bias.requires_grad)
    return out


def slice_ffn_(layer: nn.Module, spec: ArchSpec, keep: torch.Tensor) -> None:
    """Keep only neurons ``keep`` in one layer's FFN, in place."""
    for path, linear, axis in _ffn_linears(layer, spec):
        sliced = _sliced_linear(linear, keep, axis)
        expected = len(keep)
        assert sliced.weight.shape[axis] == expected, f"{path}: sliced to {tuple(sliced.weight.shape)}"
        set_layer_module(layer, path, sliced)


def resize_ffn_(model: nn.Module, widths: Sequence[int]) -> None:
    """Give every layer the FFN width ``widths[l]`` (fresh weights): the sub-FM skeleton."""
    spec = arch_of(model)
    layers = find_layers(model)
    assert len(widths) == len(layers), f"{len(widths)} widths for {len(layers)} layers"
    for layer, width in zip(layers, widths):
        if layer_linear(layer, spec.ffn_in).out_features == width:
            continue
        slice_ffn_(layer, spec, torch.arange(width))
    model.config.update({WIDTHS_ATTR: list(widths)})


def build_sub_model(full_model: nn.Module, config: FedPFTConfig, batches: Optional[Sequence] = None,
                    device="cpu") -> Tuple[nn.Module, KeepIndex]:
    """Compress ``full_model`` (untouched) into a sub-FM.

    Returns ``(sub_model, keep_index)``; ``keep_index[l]`` is the sorted LongTensor of the FM
    neurons that compressed layer ``l`` keeps. ``batches`` (public data, on the server) are needed by
    the data-aware rules ``config.saliency == "activation"`` and ``config.layer_keep == "sensitivity"``
    (:mod:`.saliency`); the paper's rules read weights only.
    """
    from . import saliency as rules

    spec = arch_of(full_model)
    sub_model = copy.deepcopy(full_model)
    widths = sub_model_widths(full_model.config, config)
    compressed = [i for i, width in enumerate(widths) if width != ffn_size(full_model.config)]
    data_aware = config.saliency != "weight" or config.layer_keep != "uniform"
    if data_aware and compressed:
        if not batches:
            raise ValueError(f"fedpft_saliency={config.saliency!r} / fedpft_layer_keep={config.layer_keep!r} "
                             "need public batches to build the sub-FM: pass `batches` (the server's public "
                             "data), or saliency='weight' and layer_keep='uniform' (the paper's data-free rules)")
        batches = list(itertools.islice(iter(batches), rules.CALIBRATION_BATCHES))
    layers = find_layers(sub_model)
    scores = {}
    activity = (rules.mean_abs_activations(sub_model, batches, compressed, device)
                if config.saliency == "activation" and compressed else {})
    for index in compressed:
        layer = layers[index]
        w_gate = layer_linear(layer, spec.ffn_gate).weight if spec.ffn_gate else None
        scores[index] = neuron_saliency(layer_linear(layer, spec.ffn_in).weight,
                                        layer_linear(layer, spec.ffn_out).weight, w_gate).cpu()
        if index in activity:
            scores[index] = scores[index] * activity[index].to(scores[index].dtype)
    if config.layer_keep == "sensitivity" and compressed:
        uniform = {index: select_neurons(scores[index], widths[index]) for index in compressed}
        sensitivity = rules.layer_sensitivity(sub_model, batches, uniform,
                                              lambda layer, keep: _sliced_ffn(layer, keep, spec), device)
        allocated = rules.allocate_widths(sensitivity, kept_width(config, ffn_size(full_model.config)),
                                          ffn_size(full_model.config))
        widths = [allocated.get(i, width) for i, width in enumerate(widths)]
        logger.info("sub-FM: layer sensitivities %s -> FFN widths %s",
                    {i: round(v, 5) for i, v in sensitivity.items()}, widths)
    keep_index: KeepIndex = {}
    for index in compressed:
        keep = select_neurons(scores[index], widths[index])
        slice_ffn_(layers[index], spec, keep)
        keep_index[index] = keep
    sub_model.config.update({WIDTHS_ATTR: widths})
    logger.info("sub-FM: %d -> %d parameters; FFN widths %s",
                count_parameters(full_model), count_parameters(sub_model), widths)
    return sub_model, keep_index


def _sliced_ffn(layer: nn.Module, keep: torch.Tensor, spec: ArchSpec) -> Dict[str, nn.Module]:
    """One layer's FFN projections sliced to neurons ``keep``, by path (the layer itself unchanged)."""
    return {path: _sliced_linear(linear, keep, axis) for path, linear, axis in _ffn_linears(layer, spec)}


def match_ffn_widths_(model: nn.Module, widths: Sequence[int]) -> bool:
    """Give every layer of a skeleton the FFN width ``widths[l]`` (fresh weights where it differs), in place.

    A client's skeleton is built at the uniform widths from the FM's config; with per-layer widths the
    server's first payload names the sub-FM's (a control tensor) and the client calls this before loading
    it. Returns whether anything changed.
    """
    spec = arch_of(model)
    layers = find_layers(model)
    if len(widths) != len(layers):
        raise ValueError(f"{len(widths)} FFN widths for a model of {len(layers)} layers")
    changed = False
    for layer, width in zip(layers, widths):
        if layer_linear(layer, spec.ffn_in).out_features != int(width):
            _fresh_ffn_(layer, spec, int(width))
            changed = True
    model.config.update({WIDTHS_ATTR: [int(w) for w in widths]})
    return changed


def build_sub_model_skeleton(model_config, config: Optional[FedPFTConfig] = None, *, model_class=None) -> nn.Module:
    """The sub-FM's architecture from configuration alone (random weights, no FM weights read).

    The widths come from ``model_config.fedpft_ffn_widths`` when present (a saved sub-FM),
    otherwise from ``config`` (the FedPFT settings the server used).
    """
    from .arch import model_class_for

    model_class = model_class or model_class_for(model_config)
    widths = getattr(model_config, WIDTHS_ATTR, None)
    if widths is None:
        assert config is not None, "need a FedPFTConfig when the model config carries no FFN widths"
        widths = sub_model_widths(model_config, config)
    # Instantiate at the smallest width and give the wider (retained) layers fresh FFNs: the skeleton
    # never holds a full-width FFN in a compressed layer, so a client's peak memory is the sub-FM's.
    spec = get_arch(model_config.model_type)
    small = copy.deepcopy(model_config)
    setattr(small, spec.ffn_size_attr, min(widths))
    model = model_class.from_config(small)
    model.config.update({spec.ffn_size_attr: getattr(model_config, spec.ffn_size_attr)})
    for layer, width in zip(find_layers(model), widths):
        if layer_linear(layer, spec.ffn_in).out_features != width:
            _fresh_ffn_(layer, spec, width)
    model.config.update({WIDTHS_ATTR: list(widths)})
    return model


def _fresh_ffn_(layer: nn.Module, spec: ArchSpec, width: int) -> None:
    """Replace one layer's FFN projections by freshly initialised ones of width ``width``."""
    for path, linear, axis in _ffn_linears(layer, spec):
        d_in, d_out = (linear.in_features, width) if axis == 0 else (width, linear.out_features)
        fresh = nn.Linear(d_in, d_out, bias=linear.bias is not None, device=linear.weight.device,
                          dtype=linear.weight.dtype)
        for name, parameter in fresh.named_parameters():  # frozen stays frozen (a LoRA-wrapped client)
            parameter.requires_grad_(getattr(linear, name).requires_grad)
        set_layer_module(layer, path, fresh)


def ffn_widths(model: nn.Module) -> List[int]:
    spec = arch_of(model)
    return [layer_linear(layer, spec.ffn_in).out_features for layer in find_layers(model)]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def encoder_parameters(model: nn.Module) -> int:
    return count_parameters(find_layers(model))


def flops_per_token(model: nn.Module, seq_len: int) -> int:
    """Multiply-accumulates per token of the transformer layers (linear layers + attention scores)."""
    hidden = model.config.hidden_size
    total = 0
    for layer in find_layers(model):
        linears = sum(m.in_features * m.out_features for m in layer.modules() if isinstance(m, nn.Linear))
        total += linears + 2 * seq_len * hidden  # QK^T and attention-weighted V
    return total
