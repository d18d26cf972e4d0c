"""``FedPFTTrainer``: the client side of FedPFT as a FedML ``ClientTrainer``.

A client holds only the sub-FM: it builds the skeleton from the model's configuration (no FM
weights) and fills it from the server's first payload. Each round it trains LoRA + head on
its local data with AdamW at a constant learning rate, and uploads those tensors; in
alignment rounds it also uploads per-neuron activation counts of the compressed FFNs.
"""
from __future__ import annotations

import logging
import resource
import sys
import time
from collections import OrderedDict
from typing import Optional

import torch

from ..compat import load_fedml
from ..core.causal_lm import hidden_states as causal_hidden_states
from ..core.lora import enable_gradient_checkpointing, trainable_state
from ..core.privacy import clip_and_noise
from .payload import CONTROL_PREFIX, METRICS_PREFIX, load_payload_, split_prefixed
from ..settings import RunSettings
from .seeding import reseed_
from ..core.stats import ActivationStatistics

ClientTrainer = load_fedml().core.ClientTrainer
logger = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class FedPFTTrainer(ClientTrainer):
    def __init__(self, model: torch.nn.Module, args, settings: Optional[RunSettings] = None,
                 compressed_layers=(), runlog=None, task_kind=None):
        super().__init__(model, args)
        self.settings = settings or RunSettings.from_args(args)
        if task_kind is None:
            from ..tasks import resolve_task_kind

            task_kind = resolve_task_kind(self.settings.fedpft.task_kind, model.config)
        self.task_kind = task_kind  # the training loss of a batch (fedpft_algo.tasks)
        self.compressed_layers = tuple(compressed_layers)
        self.runlog = runlog  # optional RunLog: hook order and an audit of every tensor received
        self.initialised = False
        self.round_idx = -1
        self.collect_stats = False
        self.stats = OrderedDict()
        self.metrics = OrderedDict()

    # ------------------------------------------------------------------ FedML contract
    def get_model_params(self):
        self._event("get_model_params", stats=bool(self.stats))
        upload = trainable_state(self.model)
        config = self.settings.fedpft
        if config.dp_clip_norm > 0:
            generator = torch.Generator().manual_seed(self.settings.round_seed(self.round_idx, f"dp{self.id}"))
            upload, norm = clip_and_noise(self.received, upload, config.dp_clip_norm,
                                          config.dp_noise_multiplier, generator)
            self.metrics["update_norm"] = norm
        for name, value in self.stats.items():
            upload[name] = value
        for name, value in self.metrics.items():
            upload[METRICS_PREFIX + name] = torch.tensor([float(value)], dtype=torch.float64)
        return upload

    def set_model_params(self, model_parameters):
        tensors, controls = split_prefixed(model_parameters, CONTROL_PREFIX)
        load_payload_(self.model, tensors, require_all=not self.initialised)
        self.initialised = True
        self.received = trainable_state(self.model)  # the round's starting point (for DP clipping)
        self.round_idx = int(controls["round"].item()) if "round" in controls else self.round_idx + 1
        self.collect_stats = bool(controls["collect_stats"].item()) if "collect_stats" in controls else False
        self._event("set_model_params", tensors={k: list(v.shape) for k, v in tensors.items()})
        if self.runlog is not None:
            self.runlog.status("training", self.round_idx)

    def _event(self, hook: str, **extra) -> None:
        if self.runlog is not None:
            self.runlog.event(hook, self.round_idx, client=self.id, **extra)

    def on_before_local_training(self, train_data, device, args):
        self._event("on_before_local_training")
        super().on_before_local_training(train_data, device, args)

    def on_after_local_training(self, train_data, device, args):
        self._event("on_after_local_training")
        super().on_after_local_training(train_data, device, args)

    def update_dataset(self, local_train_dataset, local_test_dataset, local_sample_number):
        self._event("update_dataset")
        super().update_dataset(local_train_dataset, local_test_dataset, local_sample_number)

    def train(self, train_data, device, args):
        self._event("train")
        settings = self.settings
        reseed_(settings.round_seed(self.round_idx, f"client{self.id}"), train_data)
        model = self.model.to(device)
        model.train()
        if settings.fedpft.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        start = time.perf_counter()
        losses = []
        for _ in range(settings.epochs):
            for batch in train_data:
                batch = {k: v.to(device) for k, v in batch.items()}
                loss = self.task_kind.loss(model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        epoch_seconds = (time.perf_counter() - start) / max(1, settings.epochs)
        self.stats = self._activation_counts(train_data, device) if self.collect_stats else OrderedDict()
        self.metrics = OrderedDict(train_loss=sum(losses) / max(1, len(losses)), epoch_seconds=epoch_seconds,
                                   peak_mem_mb=peak_rss_mb(), steps=len(losses))
        logger.info("client %s round %d: loss %.4f, %.1fs/epoch%s", self.id, self.round_idx,
                    self.metrics["train_loss"], epoch_seconds, ", activation counts collected" if self.stats else "")

    @torch.no_grad()
    def _activation_counts(self, train_data, device):
        self.model.eval()
        try:
            with ActivationStatistics(self.model, self.compressed_layers) as recorder:
                for batch in train_data:
                    batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
                    recorder.mask = batch.get("attention_mask")
                    if self.task_kind.causal_lm:   # the layers only: no output projection is needed here
                        causal_hidden_states(self.model, batch["input_ids"], batch["attention_mask"])
                    else:
                        self.model(**batch)
            return recorder.counts()
        finally:
            self.model.train()

    @torch.no_grad()
    def test(self, test_data, device, args):
        """A classifier's accuracy on ``test_data``; a decoder's mean training loss on it (the server scores
        the plugged-in FM with the task kind's metrics itself)."""
        if not self.task_kind.causal_lm:
            return self.task_kind.evaluate(self.model, test_data, device)
        model = self.model.to(device)
        was_training = model.training
        model.eval()
        try:
            losses = [self.task_kind.loss(model, {k: v.to(device) for k, v in batch.items()}).item()
                      for batch in test_data]
        finally:
            model.train(was_training)
        loss = sum(losses) / max(1, len(losses))
        return {"test_loss": loss, "test_total": len(losses), "loss": loss}
