"""Differential privacy on client uploads: the Gaussian mechanism of DP-FedAvg.

Each client clips its round update (the change of its LoRA + head tensors, one global L2 norm)
to ``clip_norm`` and adds Gaussian noise with standard deviation ``noise_multiplier * clip_norm``
to every coordinate before upload (McMahan et al., "Learning Differentially Private Recurrent
Language Models", ICLR 2018, with the noise added on the client). The privacy loss of a client
over the rounds is accounted with the RDP accountant of Google's ``dp-accounting`` library, for a
client sampled with probability ``client_num_per_round / client_num_in_total`` per round.
Activation counts (alignment rounds) are not covered by this mechanism.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Mapping, Optional

import torch

logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting logs every non-converging RDP order


def clip_and_noise(received: Mapping[str, torch.Tensor], trained: Mapping[str, torch.Tensor], clip_norm: float,
                   noise_multiplier: float, generator: Optional[torch.Generator] = None):
    """``received + clip(trained - received) + N(0, (noise_multiplier * clip_norm)^2)``; also the update's norm."""
    delta = OrderedDict((k, trained[k].double() - received[k].double()) for k in trained)
    norm = torch.sqrt(sum(d.pow(2).sum() for d in delta.values())).item()
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    out = OrderedDict()
    for key, d in delta.items():
        noise = torch.randn(d.shape, generator=generator, dtype=torch.float64) * noise_multiplier * clip_norm
        out[key] = (received[key].double() + d * scale + noise).to(trained[key].dtype)
    return out, norm


def epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """(epsilon, delta)-DP of one client after ``rounds`` rounds (inf without noise)."""
    if noise_multiplier <= 0 or rounds <= 0:
        return float("inf") if rounds > 0 else 0.0
    import dp_accounting

    accountant = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(sampling_rate, event)
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(delta))
