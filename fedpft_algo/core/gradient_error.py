"""The gradient error between proxy and FM: the quantity FedPFT's theory bounds.

Clients follow the gradient of their loss on the proxy (sub-FM, or FedOT's emulator) with
respect to the parameters they train (LoRA + head); the update is only as good as that gradient
is close to the FM's gradient with respect to the same parameters. On one fixed labelled batch,
with proxy and FM holding the same LoRA + head, this module measures

    rel_error = ||g_proxy - g_FM|| / ||g_FM||        cosine = <g_proxy, g_FM> / (||g_proxy|| ||g_FM||)

over the proxy's trainable tensors (for FedOT the adapter layers' LoRA + head, compared with
the FM layers they are plugged into).

The batch is server-side data only: a fixed held-out slice of the task's **test** split (the
first examples of the unshuffled test loader, at most 32). It never trains anything; client
data never reaches the server.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, Iterable, Mapping, Optional

import torch
from torch import nn

from .lora import is_trainable_name

Batch = Mapping[str, torch.Tensor]
PROBE_EXAMPLES = 32


def probe_batch(batches: Iterable[Batch], examples: int = PROBE_EXAMPLES) -> Dict[str, torch.Tensor]:
    """The first ``examples`` labelled examples of ``batches`` as one batch (from the first loader batch)."""
    for batch in batches:
        if "labels" not in batch:
            raise ValueError("the gradient-error batch needs labels")
        return {k: v[:examples].clone() for k, v in batch.items()}
    raise ValueError("no data for the gradient-error batch")


def classification_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Cross-entropy of a classifier's logits (the default loss of the probe)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return nn.functional.cross_entropy(model(**inputs).logits, batch["labels"])


def trainable_gradients(model: nn.Module, batch: Batch, device="cpu",
                        loss_fn: Callable = classification_loss) -> "OrderedDict[str, torch.Tensor]":
    """d(cross-entropy)/d(LoRA + head) on ``batch``, in eval mode (no dropout); ``.grad`` is left untouched."""
    named = [(n, p) for n, p in model.named_parameters() if is_trainable_name(n)]
    assert named, "model has no LoRA/head parameters"
    was_training = model.training
    flags = [(p, p.requires_grad) for _, p in named]
    model.eval()
    try:
        for _, p in named:
            p.requires_grad_(True)
        loss = loss_fn(model, {k: v.to(device) for k, v in batch.items()})
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    return OrderedDict((n, (g if g is not None else torch.zeros_like(p)).detach().cpu().float())
                       for (n, p), g in zip(named, grads))


def compare(proxy: Mapping[str, torch.Tensor], full: Mapping[str, torch.Tensor],
            rename: Optional[Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]] = None
            ) -> Dict[str, float]:
    """Relative error and cosine of the proxy's gradients against the FM's on the proxy's tensors."""
    proxy = rename(proxy) if rename is not None else proxy
    missing = [name for name in proxy if name not in full]
    if missing:
        raise KeyError(f"FM has no gradient for {missing[:3]}")
    g_proxy = torch.cat([proxy[name].reshape(-1) for name in proxy]).double()
    g_full = torch.cat([full[name].reshape(-1) for name in proxy]).double()
    norm_full, norm_proxy = g_full.norm(), g_proxy.norm()
    rel = (g_proxy - g_full).norm() / norm_full if norm_full > 0 else torch.tensor(float("nan"))
    cosine = g_proxy.dot(g_full) / (norm_proxy * norm_full) if norm_full > 0 and norm_proxy > 0 \
        else torch.tensor(float("nan"))
    return {"rel_error": float(rel), "cosine": float(cosine)}


class GradientProbe:
    """Measures the gradient error of a proxy against the FM on one fixed batch."""

    def __init__(self, batch: Batch, device="cpu", rename=None, loss_fn: Callable = classification_loss):
        self.batch, self.device, self.rename, self.loss_fn = batch, device, rename, loss_fn

    def measure(self, full_model: nn.Module, proxy: nn.Module, tag: str) -> Dict[str, float]:
        """``grad_rel_error_{tag}``, ``grad_cosine_{tag}`` for the current LoRA + head of both models."""
        full = trainable_gradients(full_model, self.batch, self.device, self.loss_fn)
        result = compare(trainable_gradients(proxy, self.batch, self.device, self.loss_fn), full, self.rename)
        return {f"grad_rel_error_{tag}": result["rel_error"], f"grad_cosine_{tag}": result["cosine"]}
