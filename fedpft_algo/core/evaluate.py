"""Evaluation of a classifier (plugged-in FM or sub-FM) on a labelled loader."""
from __future__ import annotations

from typing import Dict, Iterable, Mapping

import torch
from torch import nn

from .precision import autocast_for


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], device="cpu",
             precision: str = "fp32") -> Dict[str, float]:
    """Accuracy, macro-F1 and mean cross-entropy (forward passes under ``precision``'s autocast, the
    loss in fp32); the dict keys FedML's aggregators expect are included."""
    was_training = model.training
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    preds, golds = [], []
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            with autocast_for(device, precision):
                logits = model(**batch).logits
            logits = logits.float()
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            pred = logits.argmax(dim=-1)
            correct += (pred == labels).sum().item()
            total += labels.numel()
            preds.append(pred.cpu())
            golds.append(labels.cpu())
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluation data is empty")
    return {
        "accuracy": correct / total,
        "macro_f1": macro_f1(torch.cat(preds), torch.cat(golds)),
        "loss": loss_sum / total,
        "test_correct": correct,
        "test_total": total,
        "test_loss": loss_sum,
    }


def macro_f1(pred: torch.Tensor, gold: torch.Tensor) -> float:
    scores = []
    for label in torch.unique(torch.cat([pred, gold])):
        tp = ((pred == label) & (gold == label)).sum().item()
        fp = ((pred == label) & (gold != label)).sum().item()
        fn = ((pred != label) & (gold == label)).sum().item()
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)
