"""Make FedML 0.9.6 importable and offline-safe on CPU-only machines.

Three fixes, all measured (see the README's "FedML 0.9.6 notes"):

1. PyPI's ``torchvision==0.28`` is a CUDA build. Next to the CPU ``torch`` its C++ ops do not
   load, and ``import torchvision`` (which ``import fedml`` triggers) raises
   ``RuntimeError: operator torchvision::nms does not exist``. Defining the two op schemas
   before torchvision is imported lets it import; FedML never calls these ops.
2. ``fedml.init()`` fetches configs from FedML's hosted platform (5 POSTs, ~2.5 s per process,
   and certifi edits on SSL errors). :func:`load_fedml` replaces that fetch with empty configs.
3. ``import fedml`` imports wandb 0.13.2 (FedML's pin), whose data types name ``np.float_`` and
   ``np.complex_``; NumPy 2 removed both aliases, so on a machine with NumPy 2 (a GPU image with a
   recent torch) ``import fedml`` raises ``AttributeError``. :func:`ensure_numpy_aliases` restores the
   two names (``float64``, ``complex128``) where NumPy lacks them; nothing else in NumPy changes.

This module is imported by ``fedpft_algo/__init__.py`` before anything else, so
``import fedpft_algo; import fedml`` works on a fresh CPU machine with no network.
"""
from __future__ import annotations

import importlib
import logging
import os
import types

import torch

logger = logging.getLogger(__name__)

_TORCHVISION_LIB: "torch.library.Library | None" = None  # keep a reference: the schemas live as long as it does


def ensure_torchvision_ops() -> None:
    """Define ``torchvision::nms``/``qnms`` schemas when the installed torchvision cannot."""
    global _TORCHVISION_LIB
    if _TORCHVISION_LIB is not None:
        return
    try:
        torch.ops.torchvision.nms  # noqa: B018  (attribute lookup is the probe)
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_LIB = lib


_NUMPY_ALIASES = {"float_": "float64", "complex_": "complex128"}   # removed in NumPy 2.0, named by wandb 0.13.2


def ensure_numpy_aliases() -> None:
    """Give NumPy 2 back the two aliases that FedML's wandb pin reads at import time."""
    import numpy as np

    for alias, target in _NUMPY_ALIASES.items():
        if alias not in vars(np):
            setattr(np, alias, getattr(np, target))


def _offline_fetch_all_configs(self):  # same signature as MLOpsConfigs.fetch_all_configs
    return {}, {}, {}, {}


def load_fedml() -> types.ModuleType:
    """Import ``fedml`` with the three fixes applied and return the module."""
    ensure_torchvision_ops()
    ensure_numpy_aliases()
    # FedML reads these at import time; keep it from phoning home for version checks.
    os.environ.setdefault("FEDML_ENV_VERSION", "release")
    fedml = importlib.import_module("fedml")
    configs = importlib.import_module("fedml.core.mlops.mlops_configs")
    if configs.MLOpsConfigs.fetch_all_configs is not _offline_fetch_all_configs:
        configs.MLOpsConfigs.fetch_all_configs = _offline_fetch_all_configs
    return fedml


ensure_torchvision_ops()
ensure_numpy_aliases()
