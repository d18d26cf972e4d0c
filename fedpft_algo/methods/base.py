"""The :class:`Method` interface: everything in which one federated fine-tuning method differs from another.

The FedML runtime (server aggregator, client trainer) and the bench run every method the same way
and ask the config's method (``get_method(config.method)``) at each point where they differ:

==============================  ===========================================================================
what                            where it is asked
==============================  ===========================================================================
``client_kind``, ``uses_proxy`` what a client holds (sub-FM, FedOT emulator, the FM itself); bench probes
``layer_alignment(config)``     whether the pre-round hook distils the proxy (and it can be cached)
``neuron_alignment(config)``    whether neuron-level alignment runs every t rounds (clients count activations)
``build_proxy``                 the server's pre-round hook: the proxy from the FM, aligned, from the cache
``client_skeleton``             a client: the proxy's architecture from ``config.json`` alone (no FM weights)
``add_client_lora``             LoRA + head on the proxy (server and clients alike: the same names)
``plug_in_``                    the aggregate, loaded into the FM the server evaluates
``full_model_names``            proxy tensor names as the FM's (the gradient error compares them)
==============================  ===========================================================================

A method subclasses :class:`Method` (or a built-in, as FedProx is FedAvg plus one change) and is
registered with :func:`fedpft_algo.register_method`; the built-ins are in :mod:`.fedpft` and
:mod:`.fedot`. Instances are frozen dataclasses: a method's variants are its fields.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

if TYPE_CHECKING:  # the interface costs nothing to import; implementations import torch, peft, the core
    import torch
    from torch import nn

    from ..config import FedPFTConfig
    from ..core.alignment import AlignmentReport


@dataclass(frozen=True)
class Proxy:
    """What the server's pre-round hook built: the model clients hold (before LoRA) and its alignment."""

    model: "nn.Module"
    report: Optional["AlignmentReport"] = None  # None: no alignment ran in this call (off, or from the cache)
    from_cache: bool = False


@dataclass(frozen=True)
class Method(abc.ABC):
    """One federated fine-tuning method of a foundation model (FM) through a proxy that clients hold.

    Subclasses implement :meth:`build_proxy` and :meth:`client_skeleton`; the defaults of the rest are
    FedPFT's: LoRA on attention Q, K, V, O of every layer plus the whole task head, no alignment, and a
    proxy whose LoRA + head tensors have the FM's names.
    """

    # What a client holds: it names the bench's client-cost probe ("sub_model", "emulator", "full_lora").
    client_kind = "sub_model"
    # False when clients hold the FM itself: no proxy to compress, no gradient error to measure.
    uses_proxy = True

    def layer_alignment(self, config: "FedPFTConfig") -> bool:
        """Whether the pre-round hook aligns the proxy to the FM on public data (before FL)."""
        return False

    def neuron_alignment(self, config: "FedPFTConfig") -> bool:
        """Whether neuron-level alignment runs every ``config.align_interval`` rounds (clients upload counts)."""
        return False

    @abc.abstractmethod
    def build_proxy(self, full_model: "nn.Module", config: "FedPFTConfig", public_batches: Sequence,
                    eval_batches: Sequence, *, cache_dir=None, cache_extra: str = "", device: Any = "cpu") -> Proxy:
        """The server's pre-round hook: the proxy from ``full_model`` (left untouched), aligned if the method
        aligns, through the cache under ``cache_dir`` (None: no cache; ``cache_extra`` joins its key)."""

    @abc.abstractmethod
    def client_skeleton(self, model_config, config: "FedPFTConfig", *, model_class) -> "nn.Module":
        """The proxy's architecture from the FM's configuration alone (random weights; the first payload
        fills them). ``model_class``: the transformers auto class with the task's head."""

    def add_client_lora(self, model: "nn.Module", config: "FedPFTConfig") -> "nn.Module":
        """``model`` (proxy or skeleton) wrapped for client training: only LoRA + head stay trainable."""
        from ..core.lora import add_lora

        return add_lora(model, config)

    def client_model(self, model_config, config: "FedPFTConfig", *, model_class) -> "nn.Module":
        """What a client trains: its skeleton with the method's LoRA + head."""
        return self.add_client_lora(self.client_skeleton(model_config, config, model_class=model_class), config)

    def full_model_names(self, state: Mapping[str, "torch.Tensor"], proxy: "nn.Module",
                         full_model: "nn.Module") -> Mapping[str, "torch.Tensor"]:
        """``proxy``'s LoRA + head tensors ``state`` under the names of the FM's tensors they stand for."""
        return state

    def plug_in_(self, full_model: "nn.Module", state: Mapping[str, "torch.Tensor"], proxy: "nn.Module") -> None:
        """Load the aggregated LoRA + head ``state`` (proxy names) into ``full_model``, in place, checked."""
        from ..core.lora import plug_in_

        plug_in_(full_model, state)
