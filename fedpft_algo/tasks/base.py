"""The :class:`TaskKind` interface: everything in which one kind of task differs from another
(see :mod:`fedpft_algo.tasks` for where the runtime asks it). Instances are stateless."""
from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..config import FedPFTConfig
    from ..data.base import TaskData

# What every evaluation returns (the aggregator's per-round row and FedML's test() read these).
EVAL_KEYS = ("accuracy", "macro_f1", "loss", "test_correct", "test_total", "test_loss")


class TaskKind(abc.ABC):
    name: str = ""
    causal_lm: bool = False   # needs a decoder, tuned through its own output projection (no task head)

    def model_class(self, model_config):
        """The transformers auto class clients and server build."""
        from ..core.arch import model_class_for

        return model_class_for(model_config, self.causal_lm)

    def check(self, encoder, task: "TaskData", config: "FedPFTConfig") -> None:
        """Pre-flight: raise a one-line :class:`~fedpft_algo.errors.DataError` for what this kind cannot honour."""

    @abc.abstractmethod
    def features(self, encoder, task: "TaskData", config: "FedPFTConfig", split: str,
                 cache_dir: Optional[str] = None) -> Tuple[Any, Optional[Sequence[int]]]:
        """Split ``split`` ("train"/"test") as (features, labels for the loader or None when the features
        carry them), in the task's example order (the client split indexes it)."""

    @abc.abstractmethod
    def collator(self, encoder):
        """What turns a list of features into a batch dict."""

    @abc.abstractmethod
    def loss(self, model: "nn.Module", batch: Dict[str, "torch.Tensor"]) -> "torch.Tensor":
        """The training loss of one batch."""

    @abc.abstractmethod
    def eval_set(self, encoder, task: "TaskData", config: "FedPFTConfig", batch_size: int,
                 cache_dir: Optional[str] = None) -> Any:
        """The test split in the form :meth:`evaluate` takes."""

    @abc.abstractmethod
    def evaluate(self, model: "nn.Module", eval_set: Any, device="cpu") -> Dict[str, float]:
        """Metrics with at least :data:`EVAL_KEYS`."""

    @abc.abstractmethod
    def probe_batch(self, eval_set: Any) -> Dict[str, "torch.Tensor"]:
        """A fixed labelled batch of the test split for the gradient-error probe (its loss: :meth:`loss`)."""

    def sample(self, model: "nn.Module", eval_set: Any, device="cpu") -> Optional[Dict[str, Any]]:
        """A greedy answer to a fixed prompt (decoders); None for kinds without generation."""
        return None
