"""The bench's client-cost probes: which probe measures a cell's clients, and running them.

A probe is one process (:mod:`fedpft_algo.bench.client_cost`) that builds exactly one client's model and
trains one local epoch, so its time and peak memory are one client's (in FedML's ``sp`` mode server and
clients share a process, which a cell cannot measure).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

from ..config import FedPFTConfig, flatten
from ..settings import rank_device
from .spec import BenchSpec, Cell, cell_config

logger = logging.getLogger(__name__)

PROBES_JSON = "probes.json"

# The settings that change what one client's local epoch costs (the rest: alignment, rounds, learning rate)
_CLIENT_COST_FIELDS = ("ffn_keep_ratio", "retained_layers", "lora_r", "lora_dropout", "gradient_checkpointing",
                       "max_length", "precision", "client_backbone_dropout", "shared_lora_dropout", "compile",
                       "task_kind")
_SUB_FM_FIELDS = ("ffn_keep_ratio", "retained_layers")     # what clients holding the whole FM do not depend on


def _client_cost_settings(config) -> Dict[str, Any]:
    flat = flatten(config)
    fedpft = FedPFTConfig.from_flat(flat).to_dict()
    settings = {"batch_size": flat.get("batch_size", 16), **{k: fedpft[k] for k in _CLIENT_COST_FIELDS}}
    return json.loads(json.dumps(settings))   # as probes.json stores them (tuples become lists)


def probe_key(spec: BenchSpec, cell: Cell) -> str:
    """Which probe measures ``cell``'s clients: one per (model, client kind), and one of its own for a
    variant whose settings change the client's cost (a larger sub-FM, another batch size, ...)."""
    from .client_cost import kind_of

    base = dataclasses.replace(cell, method=spec.base_method(cell.method), overrides=())
    key = f"{cell.model}|{kind_of(base.method)}"
    settings = (_client_cost_settings(cell_config(spec, c, Path("."))) for c in (cell, base))
    if cell.overrides and next(settings) != next(settings):
        key += f"|{cell.method}"
    return key


def run_probe(spec: BenchSpec, model: str, kind: str, task: str, timeout: float,
              config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """One client-cost probe process; ``config``: the cell config whose client it measures (default: the base)."""
    flat = flatten(config or spec.base)
    fedpft = FedPFTConfig.from_flat(flat)
    command = [sys.executable, "-m", "fedpft_algo.bench.client_cost", "--model", model, "--kind", kind, "--task", task,
               "--examples", str(spec.probe_examples), "--batch-size", str(flat.get("batch_size", 16)),
               "--max-length", str(fedpft.max_length), "--config-json", json.dumps(fedpft.to_dict()),
               "--learning-rate", str(flat.get("learning_rate", 8e-4)),
               "--full-learning-rate", str(spec.baseline_args.get("learning_rate", 5e-5)),
               "--fedprox-mu", str(spec.baseline_args.get("fedprox_mu", 0.01)),
               "--device", rank_device(flat, 1)]   # a client's device (cpu unless using_gpu)
    # the probe sets glibc's allocator for its memory epoch itself (client_cost.heap_for_memory); an
    # environment-wide MALLOC_MMAP_THRESHOLD_ would slow its timed epochs too
    env = dict(os.environ, HF_HUB_OFFLINE="1", **({"OMP_NUM_THREADS": str(spec.threads)} if spec.threads else {}))
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"client-cost probe {model}/{kind} failed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def plan_probes(spec: BenchSpec, cells, probes, execute: bool):
    """Each model's probe task, and the probes still to run: {probe key: the first cell it measures}."""
    probe_task = {}
    for cell in cells:  # each model's probes use the first task it is benchmarked on
        probe_task.setdefault(cell.model, cell.task)
    wanted_probes = {}
    for cell in cells:
        key = probe_key(spec, cell)
        if execute and (key not in probes or probes[key].get("settings") != _probe_settings(spec, cell, probe_task)):
            wanted_probes.setdefault(key, cell)   # never probed, or probed with other client settings (the yaml changed)
    return probe_task, wanted_probes


def _probe_settings(spec: BenchSpec, cell: Cell, probe_task) -> Dict[str, Any]:
    """The client settings the probe of ``cell`` measures (on its model's probe task), as saved with it."""
    from .client_cost import _FULL_MODEL_KINDS, kind_of

    settings = _client_cost_settings(cell_config(spec, dataclasses.replace(cell, task=probe_task[cell.model]),
                                                 Path(".")))
    if kind_of(spec.base_method(cell.method)) in _FULL_MODEL_KINDS | {"full_lora"}:   # it holds the whole FM
        for name in _SUB_FM_FIELDS:
            settings.pop(name)
    return settings


def run_probes(spec: BenchSpec, wanted_probes, probe_task, out: Path, probes, failures, bar) -> None:
    """Run the wanted client-cost probes one at a time, saving ``probes.json`` after each."""
    from .client_cost import kind_of
    from ..files import write_json_atomic

    for key, cell in sorted(wanted_probes.items()):
        kind = kind_of(spec.base_method(cell.method))
        bar.set_postfix_str(f"probe {key.split('|', 1)[1]}")
        try:
            task = probe_task[cell.model]   # the probe's task, with its settings (bench.task_set)
            probes[key] = {**run_probe(spec, cell.model, kind, spec.dataset_of(task), spec.cell_timeout,
                                       cell_config(spec, dataclasses.replace(cell, task=task), out / "cache")),
                           "settings": _probe_settings(spec, cell, probe_task)}
            write_json_atomic(out / PROBES_JSON, probes)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            failures[f"probe {key}"] = str(exc)
            logger.warning("%s", exc)
        bar.update(1)
