"""Per-neuron activation statistics of the compressed FFNs (FedPFT §3.3, neuron-level alignment).

In an alignment round every client runs its local data through the sub-FM and counts, for each
neuron of each compressed layer's FFN (the post-activation values that feed the output
projection), how often it is exactly zero and the sum of its absolute values, over non-padding
positions. Clients upload these counts, never activations; the server sums them.

Two activity statistics rank the neurons:

* ``apoz`` (the paper): average percentage of zeros. With GELU an activation is exactly zero
  only for pre-activations below about -5.5, so APoZ is mostly ties (broken at random).
* ``mean_abs``: mean absolute activation, which separates neurons without ties.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Iterable, Mapping, Optional

import torch
from torch import nn

from .arch import arch_of, find_layers, layer_linear

STATS_PREFIX = "__fedpft_stats__."


class ActivationStatistics:
    """Context manager: forward pre-hooks on the FFN output projections of ``layers``.

    Set :attr:`mask` to the batch's attention mask (B, T) before each forward so padding
    positions are excluded; leave it ``None`` when every position counts (vision).
    """

    def __init__(self, model: nn.Module, layers: Iterable[int]):
        self.model = model
        self.layers = tuple(layers)
        self.mask: Optional[torch.Tensor] = None
        self._handles: list = []
        self.zeros: Dict[int, torch.Tensor] = {}
        self.abs_sum: Dict[int, torch.Tensor] = {}
        self.positions: Dict[int, int] = {}

    def _hook(self, index: int):
        def hook(_module, inputs):
            acts = inputs[0].detach()
            acts = acts.reshape(-1, acts.shape[-1]) if self.mask is None else acts[self.mask.bool()]
            zeros = (acts == 0).sum(dim=0).to("cpu", torch.int64)
            abs_sum = acts.float().abs().sum(dim=0).to("cpu", torch.float64)
            if index in self.zeros:
                self.zeros[index] += zeros
                self.abs_sum[index] += abs_sum
                self.positions[index] += acts.shape[0]
            else:
                self.zeros[index], self.abs_sum[index], self.positions[index] = zeros, abs_sum, acts.shape[0]
        return hook

    def __enter__(self) -> "ActivationStatistics":
        spec = arch_of(self.model)
        layers = find_layers(self.model)
        try:
            for index in self.layers:
                target = layer_linear(layers[index], spec.ffn_out)
                self._handles.append(target.register_forward_pre_hook(self._hook(index)))
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def counts(self) -> "OrderedDict[str, torch.Tensor]":
        """The upload: ``{prefix}{layer}.zeros|abs_sum|positions`` tensors (counts only)."""
        out = OrderedDict()
        for index in self.layers:
            if index not in self.zeros:
                raise RuntimeError(f"no activations were recorded for layer {index}")
            out[f"{STATS_PREFIX}{index}.zeros"] = self.zeros[index]
            out[f"{STATS_PREFIX}{index}.abs_sum"] = self.abs_sum[index]
            out[f"{STATS_PREFIX}{index}.positions"] = torch.tensor([self.positions[index]], dtype=torch.int64)
        return out


def activity_scores(counts: Mapping[str, torch.Tensor], statistic: str) -> Dict[int, torch.Tensor]:
    """Per-layer neuron activity from pooled counts; higher means more active on client data."""
    layers = sorted({int(k[len(STATS_PREFIX):].split(".")[0]) for k in counts})
    scores = {}
    for index in layers:
        positions = counts[f"{STATS_PREFIX}{index}.positions"].double().sum()
        if positions <= 0:
            raise ValueError(f"layer {index}: no positions were counted")
        if statistic == "apoz":
            scores[index] = 1.0 - counts[f"{STATS_PREFIX}{index}.zeros"].double() / positions
        elif statistic == "mean_abs":
            scores[index] = counts[f"{STATS_PREFIX}{index}.abs_sum"].double() / positions
        else:
            raise ValueError(f"unknown activation statistic {statistic!r} (allowed: apoz, mean_abs)")
    return scores


def select_updated_neurons(scores: Mapping[int, torch.Tensor], update_ratio: float,
                           generator: Optional[torch.Generator] = None) -> Dict[int, torch.Tensor]:
    """Per layer, the ``update_ratio`` share of least-active neurons (sorted indices).

    The most active ``1 - update_ratio`` share carries what the clients' data needs and stays
    frozen. Ties (common under APoZ) are broken at random, as in the paper.
    """
    updated = {}
    for index, score in scores.items():
        count = int(round(update_ratio * score.numel()))
        order = torch.randperm(score.numel(), generator=generator)
        ranked = order[torch.sort(score[order], stable=True).indices]  # ascending activity, random ties
        updated[index] = ranked[:count].sort().values
    return updated
