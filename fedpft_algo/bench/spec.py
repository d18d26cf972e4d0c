"""The bench yaml (``bench:`` section + the FedML config every cell starts from) and the cell matrix.

:func:`load_spec` reads and validates the yaml (see :mod:`fedpft_algo.bench.runner` for its keys),
:func:`plan_cells` expands methods x tasks x partitions x seeds (plus the optional vision cells) and
:func:`cell_config` writes one cell's FedML config: the FedPFT family selects its method with
``fedpft_method``; FedML's baselines with FedML's own ``federated_optimizer``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..methods import FEDML_BASELINES as BASELINES
from ..config import METHODS, FedPFTConfig, flatten, read_config
from ..errors import ConfigError, FedPFTError
from ..launch.plan import resolve_paths, set_key

# The built-in methods only: a cell runs in a process of its own, where a method registered here is unknown.
ALL_METHODS = METHODS + tuple(BASELINES)
_BENCH_KEYS = {"methods", "tasks", "partitions", "seeds", "cell_timeout", "probe_examples", "baseline_args",
               "vision", "smoke", "threads", "jobs", "variants", "task_set"}
_SMOKE_DEFAULT = {"methods": 3, "tasks": 1, "partitions": 1, "seeds": 1, "probe_examples": 32,
                  "set": {"comm_round": 2, "client_num_in_total": 4, "client_num_per_round": 2,
                          "max_train_examples": 200, "max_test_examples": 100, "fedpft_layer_align_steps": 5,
                          "fedpft_neuron_align_steps": 2, "fedpft_align_interval": 1, "fedpft_public_size": 200}}


@dataclass(frozen=True)
class Cell:
    method: str
    task: str
    partition: str          # "homo" or "hetero:<alpha>"
    seed: int
    model: str
    overrides: Tuple[Tuple[str, Any], ...] = ()
    suite: str = "text"     # "text" (the main matrix) or "vision" (the optional vision cells)

    @property
    def id(self) -> str:
        model = Path(self.model).name if os.sep in self.model else self.model
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{model}-{self.task}-{self.partition}-s{self.seed}-{self.method}")


@dataclass
class BenchSpec:
    path: Path
    base: Dict[str, Dict[str, Any]]          # the FedML sections
    methods: List[str]
    tasks: List[str]
    partitions: List[str]
    seeds: List[int]
    cell_timeout: float = 1800.0
    probe_examples: int = 64
    baseline_args: Dict[str, Any] = field(default_factory=dict)
    vision: Dict[str, Any] = field(default_factory=dict)
    threads: Optional[int] = None
    jobs: int = 1                            # cells run side by side (each with cores // jobs threads)
    # name -> (method it runs, FedML/fedpft_* keys it changes): e.g. the APoZ-vs-mean_abs and t / p studies
    variants: Dict[str, Tuple[str, Tuple[Tuple[str, Any], ...]]] = field(default_factory=dict)
    # task -> FedML/fedpft_* keys its cells change (a prompt template, label answers, the task kind); the key
    # `dataset` makes the task a named view of another data set (a corpus for language modelling)
    task_set: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    # the seeds the report covers: the yaml's and any a `--seeds` call ran (None: ``seeds``)
    report_seeds: Optional[List[int]] = None

    def dataset_of(self, task: str) -> str:
        """The data set a task's cells load: the task itself, or its ``task_set`` ``dataset``."""
        return str(self.task_set.get(task, {}).get("dataset", task))

    def base_method(self, method: str) -> str:
        """The method a bench method runs: itself, or the method a variant is built on."""
        return self.variants[method][0] if method in self.variants else method

    @property
    def model(self) -> str:
        return str(flatten(self.base).get("model", "minilm-l6"))

    @property
    def vision_task(self) -> str:
        return str(self.vision.get("task", "fashion_mnist"))


# ---------------------------------------------------------------------- the bench yaml
def load_spec(path: os.PathLike, *, smoke: bool = False) -> BenchSpec:
    path = Path(path).expanduser().resolve()
    config = read_config(path)
    bench = config.pop("bench", None)
    if not isinstance(bench, dict):
        raise ConfigError(f"config file {path}: needs a 'bench:' section (methods, tasks, partitions, seeds)")
    unknown = sorted(set(bench) - _BENCH_KEYS)
    if unknown:
        raise ConfigError(f"config file {path}: unknown bench key(s) {unknown}: expected {sorted(_BENCH_KEYS)}")
    resolve_paths(config, path.parent)
    vision = bench.get("vision")
    if isinstance(vision, dict) and vision.get("model"):  # a directory, relative to the bench yaml
        model = Path(str(vision["model"])).expanduser()
        bench["vision"] = dict(vision, model=str(model if model.is_absolute() else path.parent / model))
    task_set = _task_set(bench, config)   # for the whole suite's tasks (--smoke keeps the first)
    if smoke:
        bench = _apply_smoke(bench, config)
    variants = _variants(bench, config)
    spec = BenchSpec(path=path, base=config, methods=_names(bench, "methods", ALL_METHODS + tuple(variants)),
                     tasks=[str(t) for t in _list(bench, "tasks")],
                     partitions=[_partition(p, config) for p in _list(bench, "partitions")],
                     seeds=[_int(s, "seeds") for s in _list(bench, "seeds")],
                     cell_timeout=float(bench.get("cell_timeout", 1800)),
                     probe_examples=_int(bench.get("probe_examples", 64), "probe_examples"),
                     baseline_args=dict(bench.get("baseline_args") or {}), vision=dict(bench.get("vision") or {}),
                     threads=bench.get("threads"), jobs=bench.get("jobs", 1), variants=variants,
                     task_set=task_set)
    if spec.threads is not None:
        _check_positive_int("threads", spec.threads, "an integer >= 1 or null")
    _check_positive_int("jobs", spec.jobs, "an integer >= 1")
    if not spec.cell_timeout > 0:
        raise ConfigError(f"bench.cell_timeout={spec.cell_timeout!r} is not allowed: expected seconds > 0")
    FedPFTConfig.from_sections(config)  # the base fedpft_args must be valid
    return spec


def _check_positive_int(key: str, value: Any, allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"bench.{key}={value!r} is not allowed: expected {allowed}")


def _variants(bench, config) -> Dict[str, Tuple[str, Tuple[Tuple[str, Any], ...]]]:
    """``variants: {name: {method: fedpft, set: {fedpft_align_interval: 5}}}``, checked now."""
    raw = bench.get("variants") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"bench.variants={raw!r} is not allowed: expected a mapping name -> {{method, set}}")
    variants = {}
    for name, value in raw.items():
        if name in ALL_METHODS or not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)):
            raise ConfigError(f"bench.variants: {name!r} is not allowed: expected a new name of letters, digits, "
                              f"'_', '.', '-' (not one of {', '.join(ALL_METHODS)})")
        if not isinstance(value, dict) or set(value) - {"method", "set"} or value.get("method") not in ALL_METHODS:
            raise ConfigError(f"bench.variants.{name}: expected {{method: one of {', '.join(ALL_METHODS)}, "
                              f"set: {{key: value}}}}")
        overrides = value.get("set") or {}
        if not isinstance(overrides, dict):
            raise ConfigError(f"bench.variants.{name}.set={overrides!r} is not allowed: expected a mapping of keys")
        _check_overrides(config, overrides, f"bench.variants.{name}", ".set")
        variants[str(name)] = (value["method"], tuple(sorted(overrides.items())))
    return variants


def _check_overrides(config, overrides: Dict[str, Any], where: str, suffix: str = "") -> None:
    """``overrides`` (FedML / ``fedpft_*`` keys) applied to a copy of ``config`` make a valid config."""
    trial = copy.deepcopy(config)
    for key, setting in overrides.items():
        set_key(trial, key, setting, where=f"{where}{suffix}:")
    try:
        FedPFTConfig.from_sections(trial)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _task_set(bench, config) -> Dict[str, Dict[str, Any]]:
    """``task_set: {task: {key: value}}`` for tasks of the suite, checked now."""
    raw = bench.get("task_set") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"bench.task_set={raw!r} is not allowed: expected a mapping task -> {{key: value}}")
    tasks = [str(t) for t in bench.get("tasks") or ()]
    for task, overrides in raw.items():
        if str(task) not in tasks:
            raise ConfigError(f"bench.task_set: {task!r} is not allowed: expected tasks of bench.tasks ({', '.join(tasks)})")
        if not isinstance(overrides, dict) or not overrides:
            raise ConfigError(f"bench.task_set.{task}={overrides!r} is not allowed: expected a mapping of keys")
        _check_overrides(config, overrides, f"bench.task_set.{task}")
    return {str(t): dict(v) for t, v in raw.items()}


def _apply_smoke(bench: Dict[str, Any], config: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    smoke = bench.get("smoke") or _SMOKE_DEFAULT
    bench = dict(bench)
    bench.pop("vision", None)  # the smoke suite is text only unless its section names vision cells
    for key, value in smoke.items():
        if key == "set":
            for name, setting in value.items():
                set_key(config, name, setting, where="bench.smoke.set:")
        elif isinstance(value, int) and key in ("methods", "tasks", "partitions", "seeds"):
            bench[key] = list(bench.get(key) or [])[:value]  # the first N
        else:
            bench[key] = value
    return bench


def _list(bench, key) -> list:
    value = bench.get(key)
    if not isinstance(value, list) or not value:
        raise ConfigError(f"bench.{key}={value!r} is not allowed: expected a non-empty list")
    return value


def _names(bench, key, allowed) -> List[str]:
    names = [str(v) for v in _list(bench, key)]
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ConfigError(f"bench.{key}: {bad} not allowed: expected names from {', '.join(allowed)}")
    return names


def _int(value, key) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"bench.{key}: {value!r} is not allowed: expected an integer")
    return value


def _partition(value, config) -> str:
    text = str(value)
    if text in ("homo", "iid"):
        return "homo"
    method, _, alpha = text.partition(":")
    if method not in ("hetero", "dirichlet"):
        raise ConfigError(f"bench.partitions: {text!r} is not allowed: expected homo, hetero or hetero:ALPHA")
    try:
        alpha = float(alpha) if alpha else float(flatten(config).get("partition_alpha", 1.0))
    except ValueError:
        raise ConfigError(f"bench.partitions: {text!r}: the Dirichlet alpha must be a number") from None
    return f"hetero:{alpha:g}"


# ---------------------------------------------------------------------- cells
def plan_cells(spec: BenchSpec, methods: Optional[Sequence[str]] = None, tasks: Optional[Sequence[str]] = None,
               partitions: Optional[Sequence[str]] = None, *,
               runnable_only: bool = True) -> Tuple[List[Cell], List[str]]:
    """The matrix, filtered; and notes on what was skipped (tasks not installed, no vision model).

    ``runnable_only=False`` plans the whole matrix the yaml names, whether or not this machine can run
    every cell of it now (the report's view: cells finished elsewhere or earlier still belong to it).
    """
    from ..data.tasks import load_task

    notes, available = [], []
    for task in spec.tasks:
        if tasks and task not in tasks:
            continue
        try:
            if runnable_only:
                load_task(spec.dataset_of(task), max_train=8, max_test=8)
        except FedPFTError as exc:
            notes.append(f"task {task} skipped: {exc}")
            continue
        available.append(task)
    wanted = {_partition(p, spec.base) for p in partitions} if partitions else None
    chosen = [p for p in spec.partitions if wanted is None or p in wanted]
    cells = [Cell(m, t, p, s, spec.model, spec.variants[m][1] if m in spec.variants else ())
             for t in available for p in chosen for s in spec.seeds for m in spec.methods
             if not methods or m in methods]
    vision = spec.vision
    wanted = vision.get("model") and not (tasks and spec.vision_task not in tasks)
    if wanted and runnable_only and not Path(vision["model"]).is_dir():
        notes.append(f"vision cells skipped: bench.vision.model {vision['model']} is not a directory "
                     f"(`fedpft pretrain-vit --out {vision['model']}` makes one)")
    elif wanted:
        overrides = tuple(sorted((vision.get("set") or {}).items()))
        for m in vision.get("methods") or spec.methods:
            if not methods or m in methods:
                cells += [Cell(m, spec.vision_task, p, s, str(vision["model"]), overrides, "vision")
                          for p in chosen for s in spec.seeds]
    return cells, notes


def cell_config(spec: BenchSpec, cell: Cell, cache_dir: Path) -> Dict[str, Dict[str, Any]]:
    config = copy.deepcopy(spec.base)
    method, _, alpha = cell.partition.partition(":")
    where = f"bench cell {cell.id}:"
    set_key(config, "dataset", cell.task, where=where)
    set_key(config, "model", cell.model, where=where)
    set_key(config, "random_seed", cell.seed, where=where)
    set_key(config, "partition_method", method, where=where)
    if alpha:
        set_key(config, "partition_alpha", float(alpha), where=where)
    for key, value in list(spec.task_set.get(cell.task, {}).items()) + list(cell.overrides):
        set_key(config, key, value, where=where)
    flat = flatten(config)
    if not flat.get("data_cache_dir") and not flat.get("fedpft_cache_dir"):
        config.setdefault("data_args", {})["data_cache_dir"] = str(cache_dir)
    method = spec.base_method(cell.method)
    if method in BASELINES:
        config.setdefault("train_args", {})["federated_optimizer"] = BASELINES[method]
        for key, value in spec.baseline_args.items():  # {method: {...}} entries apply to that baseline only
            if key not in BASELINES:
                config["train_args"][key] = value
        for key, value in (spec.baseline_args.get(method) or {}).items():
            config["train_args"][key] = value
    else:
        config.setdefault("fedpft_args", {})["fedpft_method"] = method
    return config


# Keys the shipped bench yamls pinned after their cells were recorded, at the value those cells ran with (the
# library's default then): left out of the hash, so that the finished cells stay finished on a resume.
_PINNED_LATER = {"fedpft_client_backbone_dropout": True, "fedpft_shared_lora_dropout": False}
# Where the caches live changes no result (the default is <out>/cache, an absolute path): left out of the hash,
# so that a bench folder resumes wherever it is checked out.
_CACHE_KEYS = ("data_cache_dir", "fedpft_cache_dir")


def config_hash(config, *, with_cache_dir: bool = False) -> str:
    """The hash that says a finished cell ran ``config``; ``with_cache_dir``: the form recorded before the cache
    directory was left out (still accepted on a resume from the same folder)."""
    def kept(key, value):
        return _PINNED_LATER.get(key, object()) != value and (with_cache_dir or key not in _CACHE_KEYS)

    config = {section: {key: value for key, value in values.items() if kept(key, value)}
                       if isinstance(values, dict) else values
              for section, values in config.items()}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
