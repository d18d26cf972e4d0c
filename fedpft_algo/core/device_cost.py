"""What a participant's work costs on its device: peak device memory, tokens per second, and the
device itself as a number that fits the metrics channel.

On a CPU there is no device memory apart from the process's: :func:`peak_device_mb` is None there
(the metrics leave the column empty), never a 0 that would read as measured.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch

CPU_CODE = -1   # device_code of a CPU; cuda:k is k


def reset_peak(device) -> None:
    """Start a new peak-memory window on a CUDA ``device`` (nothing elsewhere)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_device_mb(device) -> Optional[float]:
    """``torch.cuda.max_memory_allocated`` of a CUDA ``device`` since :func:`reset_peak`, in MiB; None elsewhere."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def synchronize(device) -> None:
    """Wait for ``device``'s queued work (CUDA runs asynchronously: a timer must wait for it)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch_tokens(batch: Mapping[str, torch.Tensor]) -> Optional[int]:
    """The non-padding tokens of a text batch (its attention mask's ones; all of ``input_ids`` without
    a mask); None for a batch without tokens (images)."""
    mask = batch.get("attention_mask")
    if mask is not None:
        return int(mask.sum().item())
    ids = batch.get("input_ids")
    return int(ids.numel()) if ids is not None else None


def device_code(device) -> int:
    """``cuda:k`` -> k, anything else -> :data:`CPU_CODE` (a float-sized code for the metrics channel)."""
    device = torch.device(device)
    return (device.index or 0) if device.type == "cuda" else CPU_CODE


def device_name(code: int) -> str:
    """The inverse of :func:`device_code`: ``"cuda:k"`` or ``"cpu"``."""
    return "cpu" if int(code) < 0 else f"cuda:{int(code)}"
