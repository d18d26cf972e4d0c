"""The methods, registered by name: ``fedpft_method`` in the yaml selects one.

A method is a :class:`~fedpft_algo.methods.base.Method`: it decides what clients hold, how the
server builds (and caches) that proxy, which alignments run, how client LoRA is added and how the
aggregate maps back into the FM. The runtime and the bench ask ``get_method(config.method)``;
nothing outside this package tests a method's name. Built in: ``fedpft`` and its ablations
``fedpft_n``, ``fedpft_b``, ``fedpft_d``, ``fedpetuning`` (:mod:`.fedpft`), ``fedot`` (:mod:`.fedot`);
:func:`register_method` adds one to this process only. The processes ``fedpft run`` and ``fedpft bench``
start know the built-ins alone; to run a method of your own, register it in a script that then calls
:func:`fedpft_algo.runtime.participant.main` and run that script with FedML's arguments
(``python my_run.py --cf config.yaml``: one process with ``backend: sp``, or under ``mpirun``).

FedML's own baselines (:data:`FEDML_BASELINES`) are not methods of this kind: they run FedML's
trainer unchanged (:mod:`fedpft_algo.runtime.baselines`); the bench lists both.

Imports: this package may import ``core``, ``config``, ``errors`` and the file/run-directory helpers;
never ``fedml``, ``data``, ``models``, ``runtime``, ``launch`` or ``bench``. The registry and
:mod:`.base` import neither transformers nor peft: the built-ins are imported on first use.
"""
from __future__ import annotations

import re
from typing import Dict, Tuple

from .. import config as _config
from ..errors import ConfigError
from .base import Method, Proxy

__all__ = ["Method", "Proxy", "register_method", "get_method", "known_methods", "FEDML_BASELINES"]

# bench method name -> FedML's federated_optimizer (run by fedpft_algo.runtime.baselines)
FEDML_BASELINES: Dict[str, str] = {"fedavg": "FedAvg", "fedprox": "FedProx", "fedopt": "FedOpt", "fednova": "FedNova"}

_REGISTRY: Dict[str, Method] = {}
_builtins_loaded = False


def _registry() -> Dict[str, Method]:
    """The registry, with the built-ins in it (imported on first use: they import transformers and peft)."""
    global _builtins_loaded
    if not _builtins_loaded:
        from .fedot import FedOT
        from .fedpft import FedPETuning, FedPFT

        builtins = {
            "fedpft": FedPFT(),
            "fedpft_n": FedPFT(layer_level=False, neuron_level=False),  # FedPFT_N: no alignment at all
            "fedpft_b": FedPFT(neuron_level=False),                      # FedPFT_B: only before FL
            "fedpft_d": FedPFT(layer_level=False),                       # FedPFT_D: only during FL
            "fedpetuning": FedPETuning(),
            "fedot": FedOT(),
        }
        assert tuple(builtins) == _config.METHODS, "config.METHODS names exactly the built-in methods"
        _REGISTRY.update(builtins)
        _builtins_loaded = True
    return _REGISTRY


def register_method(name: str, method: Method, *, overwrite: bool = False) -> None:
    """Make ``method`` selectable as ``fedpft_method: <name>`` (in this process)."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"method name {name!r}: expected letters, digits, '_', '.', '-'")
    if not isinstance(method, Method):
        raise TypeError(f"method {name!r}: expected a fedpft_algo.methods.Method, got {type(method).__name__}")
    if name in FEDML_BASELINES:
        raise ValueError(f"method name {name!r} is FedML's baseline of that name (the bench runs it)")
    registry = _registry()
    if name in registry and not overwrite:
        raise ValueError(f"method {name!r} is already registered (pass overwrite=True to replace it)")
    registry[name] = method


def get_method(name: str) -> Method:
    """The method registered as ``name``; a :class:`ConfigError` naming the known methods otherwise."""
    registry = _registry()
    if name not in registry:
        raise ConfigError(f"{_config.PREFIX}method={name!r} is not allowed: expected one of "
                          f"{', '.join(known_methods())}")
    return registry[name]


def known_methods() -> Tuple[str, ...]:
    """Every registered name: the built-ins (:data:`fedpft_algo.config.METHODS`), then the added ones.

    Cheap: it does not import the built-ins."""
    return _config.METHODS + tuple(name for name in _REGISTRY if name not in _config.METHODS)


_config.bind_method_registry(known_methods, get_method)
