"""Data-aware sub-FM construction rules (options beside the paper's weight saliency and uniform ratio).

Both rules run on the server, on a few batches of its public data, before the FM is compressed:

* ``fedpft_saliency: activation`` - neuron ``j``'s weight saliency ``s_j`` (the paper's norm of its input
  row and output column) times its mean absolute activation ``a_j`` on public data (the FFN intermediate
  that feeds the output projection, padding excluded): ``s_j * a_j``. This is Wanda's rule (weight
  magnitude times input activation norm, Sun et al. 2023) applied to whole neurons: a neuron with large
  weights that rarely fires contributes little to the layer's output.
* ``fedpft_layer_keep: sensitivity`` - each compressed layer is cut *alone* at the uniform ratio and the
  FM's final hidden state is compared with the uncut FM's (teacher-RMS-normalised MSE) on public data;
  the total FFN budget of the uniform rule (sum of kept neurons, hence the FLOP ratio) is then shared
  out in proportion to these sensitivities, each layer bounded to ``[0.1, 0.9]`` of its width (or the
  uniform ratio, if that lies outside), and rounded so that the sum is exactly the uniform rule's.

The per-layer widths then travel with the sub-FM's config (``fedpft_ffn_widths``) and, to clients, with
the first payload (a control tensor): clients never see the FM's weights or the public data.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Mapping, Sequence

import torch
from torch import nn

from .alignment import Batch, _model_inputs, _valid_mask, hidden_states, output_loss
from .arch import arch_of, find_layers, layer_linear, set_layer_module
from .stats import ActivationStatistics

# How many public batches the data-aware rules look at (the server's calibration set).
CALIBRATION_BATCHES = 8
KEEP_BOUNDS = (0.1, 0.9)


@torch.no_grad()
def mean_abs_activations(model: nn.Module, batches: Sequence[Batch], layers: Sequence[int],
                         device="cpu") -> Dict[int, torch.Tensor]:
    """Per layer in ``layers``: the mean |activation| of each FFN neuron over the batches' valid positions."""
    was_training = model.training
    model.eval()
    try:
        with ActivationStatistics(model, layers) as recorder:
            for batch in batches:
                recorder.mask = batch.get("attention_mask")
                if recorder.mask is not None:
                    recorder.mask = recorder.mask.to(device)
                model(**_model_inputs(batch, device))
    finally:
        model.train(was_training)
    return {index: recorder.abs_sum[index] / max(1, recorder.positions[index]) for index in layers}


@torch.no_grad()
def layer_sensitivity(model: nn.Module, batches: Sequence[Batch], keep: Mapping[int, torch.Tensor],
                      slice_layer: Callable[[nn.Module, torch.Tensor], Dict[str, nn.Module]],
                      device="cpu") -> Dict[int, float]:
    """For each layer ``l`` of ``keep``: the final hidden state's normalised MSE when layer ``l`` alone keeps
    only neurons ``keep[l]`` (every other layer whole). ``slice_layer(layer, keep)`` returns the sliced FFN
    modules by path; ``model`` is changed only inside this call and restored exactly."""
    was_training = model.training
    model.eval()
    spec = arch_of(model)
    layers = find_layers(model)
    try:
        reference = [hidden_states(model, batch, device)[-1:] for batch in batches]  # the final hidden state
        result = {}
        for index, kept in keep.items():
            layer = layers[index]
            originals = {path: layer_linear(layer, path) for path in (spec.ffn_in, spec.ffn_out, spec.ffn_gate) if path}
            try:
                for path, module in slice_layer(layer, kept).items():
                    set_layer_module(layer, path, module)
                total = 0.0
                for batch, target in zip(batches, reference):
                    output = hidden_states(model, batch, device)[-1:]
                    total += output_loss(target, output, _valid_mask(batch, target[0])).item()
            finally:
                for path, module in originals.items():
                    set_layer_module(layer, path, module)
            result[index] = total / max(1, len(batches))
    finally:
        model.train(was_training)
    return result


def allocate_widths(sensitivity: Mapping[int, float], uniform: int, d_ff: int,
                    bounds=KEEP_BOUNDS) -> Dict[int, int]:
    """Widths proportional to ``sensitivity`` whose sum is exactly ``uniform * len(sensitivity)``.

    Each width lies in ``[ceil(low * d_ff), floor(high * d_ff)]`` (widened to include ``uniform``);
    the proportionality constant is found by bisection over the clamped sum, then the widths are rounded
    by largest remainder.
    """
    layers = sorted(sensitivity)
    total = uniform * len(layers)
    low = min(uniform, max(1, math.ceil(bounds[0] * d_ff)))
    high = max(uniform, min(d_ff, math.floor(bounds[1] * d_ff)))
    values = {index: max(float(sensitivity[index]), 0.0) for index in layers}
    if not all(math.isfinite(v) for v in values.values()) or max(values.values(), default=0.0) <= 0:
        return {index: uniform for index in layers}
    floor_value = 1e-9 * max(values.values())
    values = {index: max(v, floor_value) for index, v in values.items()}

    def widths_at(scale: float) -> Dict[int, float]:
        return {index: min(high, max(low, scale * values[index])) for index in layers}

    lo_scale, hi_scale = 0.0, high / min(values.values())
    for _ in range(200):
        mid = (lo_scale + hi_scale) / 2
        if sum(widths_at(mid).values()) < total:
            lo_scale = mid
        else:
            hi_scale = mid
    exact = widths_at(hi_scale)
    widths = {index: int(math.floor(exact[index])) for index in layers}
    by_remainder = sorted(layers, key=lambda i: (exact[i] - widths[i], values[i]), reverse=True)
    short = total - sum(widths.values())
    for index in by_remainder * 2:
        if short <= 0:
            break
        if widths[index] < high:
            widths[index] += 1
            short -= 1
    while short < 0:  # bisection landed a hair above the total: take from the widest
        index = max((i for i in layers if widths[i] > low), key=lambda i: widths[i])
        widths[index] -= 1
        short += 1
    assert sum(widths.values()) == total, (widths, total)
    return widths
