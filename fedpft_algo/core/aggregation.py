"""Server-side aggregation: pure functions over client uploads.

An upload is ``(sample_count, tensors)``. FedPFT averages the LoRA + head tensors weighted by
sample count (``W = sum_i n_i W_i / sum_i n_i``, the paper's rule; the authors' code used a plain
mean, offered here as ``"uniform"``) and sums activation-statistic counts.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Sequence, Tuple

import torch

Upload = Tuple[int, Mapping[str, torch.Tensor]]


def weighted_average(uploads: Sequence[Upload], weighting: str = "weighted") -> "OrderedDict[str, torch.Tensor]":
    """Average tensors across clients; never mutates the inputs."""
    if not uploads:
        raise ValueError("no client uploads to aggregate")
    keys = list(uploads[0][1].keys())
    for index, (_, tensors) in enumerate(uploads):
        if set(tensors.keys()) != set(keys):
            raise KeyError(f"upload {index} has different tensor names than upload 0")
    if weighting == "weighted":
        counts = torch.tensor([float(n) for n, _ in uploads], dtype=torch.float64)
        if (counts <= 0).any():
            raise ValueError(f"sample counts must be positive, got {counts.tolist()}")
        weights = counts / counts.sum()
    elif weighting == "uniform":
        weights = torch.full((len(uploads),), 1.0 / len(uploads), dtype=torch.float64)
    else:
        raise ValueError(f"weighting must be 'weighted' or 'uniform', got {weighting!r}")
    averaged = OrderedDict()
    for key in keys:
        first = uploads[0][1][key]
        total = torch.zeros(first.shape, dtype=torch.float64)
        for weight, (_, tensors) in zip(weights, uploads):
            total += weight * tensors[key].detach().to("cpu", torch.float64)
        averaged[key] = total.to(first.dtype)
    return averaged


def sum_tensors(uploads: Sequence[Mapping[str, torch.Tensor]]) -> "OrderedDict[str, torch.Tensor]":
    """Element-wise sum (for count statistics); never mutates the inputs."""
    if not uploads:
        raise ValueError("nothing to sum")
    total = OrderedDict((k, v.detach().to("cpu", copy=True)) for k, v in uploads[0].items())
    for tensors in uploads[1:]:
        if set(tensors) != set(total):
            raise KeyError("statistic uploads have different tensor names")
        for key, value in tensors.items():
            total[key] += value.detach().cpu()
    return total
