"""Mixed precision (``fedpft_precision``): one autocast context and one gradient scaler for every
forward/backward the plugin runs: client training, both alignments, activation counts and evaluation.

* ``fp32``: no autocast, no scaler (the paper's setting).
* ``bf16``: ``torch.autocast(device_type, torch.bfloat16)`` on CUDA and CPU; no scaler (bf16 has
  fp32's exponent range, gradients do not underflow).
* ``fp16``: ``torch.autocast(device_type, torch.float16)`` and a ``torch.amp.GradScaler``; CUDA only
  (the launcher's pre-flight refuses fp16 without ``using_gpu``).

Autocast casts the inputs of matmul-like ops, never the parameters: LoRA, the head, the FFN weights
being aligned and AdamW's state stay fp32.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch

from ..config import PRECISIONS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def device_type(device) -> str:
    """``"cuda"`` / ``"cpu"`` / ... of a device given as a string or ``torch.device``."""
    return torch.device(device).type


def autocast_for(device, precision: str = "fp32") -> ContextManager:
    """The autocast context of ``precision`` on ``device`` (a no-op context for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    kind = device_type(device)
    if precision == "fp16" and kind != "cuda":
        raise ValueError(f"precision fp16 needs a CUDA device (gradient scaling), not {kind}: use bf16 or fp32")
    return torch.autocast(device_type=kind, dtype=DTYPES[precision])


def grad_scaler(device, precision: str = "fp32") -> Optional["torch.amp.GradScaler"]:
    """A ``GradScaler`` for fp16 on CUDA; None otherwise (fp32, bf16: gradients need no scaling)."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device_type(device))


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler=None, params=None,
                  max_grad_norm: Optional[float] = None) -> None:
    """``loss.backward()``, optional gradient clipping of ``params``, ``optimizer.step()``; through
    ``scaler`` when one is given (the gradients are unscaled before clipping)."""
    if scaler is None:
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        return
    scaler.scale(loss).backward()
    if max_grad_norm is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
