"""Pre-flight limits: values that pass the yaml's checks but that the model, the data or the optimiser
cannot honour, found before any process starts.

:func:`~fedpft_algo.launch.preflight.preflight` calls :func:`check_keys` on the resolved config
before anything reads it, :func:`check_devices` (each rank's device, CUDA, the precision) next, and
:func:`check_loaded` once it has loaded what the participants will load (the task, the FM's config,
the client split). Each limit is one
:class:`~fedpft_algo.errors.ConfigError` line naming the key, the value and what is allowed,
so ``fedpft run`` exits 2 without a run directory instead of failing inside a participant
(e.g. ``fedpft_max_length=1000`` on a 512-position model: a tensor size mismatch in round 1).
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..errors import ConfigError
from .plan import is_int

# Where a FedML key belongs when the config lacks it (FedML's layout), for the error message.
SECTIONS = {"learning_rate": "train_args", "weight_decay": "train_args", "epochs": "train_args",
            "batch_size": "train_args", "random_seed": "common_args", "partition_method": "data_args",
            "partition_alpha": "data_args", "max_train_examples": "data_args", "max_test_examples": "data_args",
            "frequency_of_the_test": "validation_args"}
# Architectures whose position ids start after the padding index (RoBERTa's scheme): a model
# with P position embeddings takes at most P - pad_token_id - 1 tokens.
PADDING_OFFSET_TYPES = ("roberta", "mpnet", "xlm-roberta", "camembert", "longformer")
MAX_SEED = 2**32 - 1   # numpy's seed range (FedML seeds numpy with random_seed in every participant)


@dataclass(frozen=True)
class Preflight:
    """What pre-flight loaded, for ``fedpft run --check``'s summary."""

    model: str
    model_type: str
    num_layers: int
    hidden_size: int
    max_tokens: Optional[int]      # text models: the longest input the model takes
    task: str
    modality: str
    num_labels: int
    train_examples: int
    test_examples: int
    public_examples: int
    settings: Any                  # the run's RunSettings
    devices: Optional[Dict[int, str]] = None   # rank -> device (check_devices)


def _bad(plan, key: str, value: Any, allowed: str) -> ConfigError:
    section = next((s for s, keys in plan.config.items() if key in keys),
                   "fedpft_args" if key.startswith("fedpft_") else SECTIONS.get(key, "?"))
    return ConfigError(f"config file {plan.config_file}: {section}.{key}={value!r} is not allowed: expected {allowed}")


def _number(value: Any) -> Optional[float]:
    """``value`` as a finite float (numbers, or strings such as YAML's ``1e-3``), else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def check_keys(plan) -> None:
    """FedML's training keys, before anything reads them: the optimiser's learning rate and weight
    decay, epochs, batch size, the partition, the seed, the example limits, the test frequency."""
    from ..data.partition import METHODS
    from ..config import flatten

    flat = flatten(plan.config)
    given = {key: flat[key] for key in SECTIONS if flat.get(key) is not None}

    def require(key: str, ok, allowed: str) -> None:
        if key in given and not ok(given[key]):
            raise _bad(plan, key, given[key], allowed)

    require("learning_rate", lambda v: (_number(v) or 0) > 0, "a finite number > 0 (AdamW's step size)")
    require("weight_decay", lambda v: _number(v) is not None and _number(v) >= 0, "a finite number >= 0")
    for key in ("epochs", "batch_size"):
        require(key, lambda v: is_int(v) and v >= 1, "an integer >= 1")
    require("partition_method", lambda v: v in METHODS, "one of " + ", ".join(METHODS))
    if given.get("partition_method", "hetero") == "hetero":
        require("partition_alpha", lambda v: (_number(v) or 0) > 0,
                "a finite number > 0 (the Dirichlet concentration; smaller = more skewed)")
    require("random_seed", lambda v: is_int(v) and 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]")
    for key in ("max_train_examples", "max_test_examples"):
        require(key, lambda v: is_int(v) and v >= 1, "an integer >= 1, or null for the whole split")
    if plan.backend != "sp":   # FedML's server tests every frequency_of_the_test rounds (round % frequency)
        if "frequency_of_the_test" not in flat:
            raise ConfigError(f"config file {plan.config_file}: validation_args.frequency_of_the_test is missing: "
                              f"expected an integer >= 1")
        given["frequency_of_the_test"] = flat["frequency_of_the_test"]
        require("frequency_of_the_test", lambda v: is_int(v) and v >= 1, "an integer >= 1")


def check_devices(plan, *, cuda_devices: Optional[int] = None) -> Dict[int, str]:
    """``device_args`` and ``fedpft_precision`` against this machine: the device of each rank
    (:func:`~fedpft_algo.settings.rank_device`, FedML's GPU mapping), found before any process starts.

    The mapping is read first (a missing file or key, a process count other than the run's), then
    CUDA is asked for (``cuda_devices``: the visible GPU count, None to ask torch), then the
    mapping's GPU indices are checked against it. fp16 needs CUDA (its gradient scaler).
    Returns ``{rank: device}``."""
    from ..config import flatten
    from ..settings import rank_device

    flat = flatten(plan.config)
    using_gpu = flat.get("using_gpu", False)
    if not isinstance(using_gpu, bool):
        raise _bad(plan, "using_gpu", using_gpu, "true or false")
    ranks = range(plan.num_processes)

    def devices_of(visible: Optional[int]) -> Dict[int, str]:
        try:
            return {rank: rank_device(flat, rank, visible_gpus=visible) for rank in ranks}
        except ConfigError as exc:
            raise ConfigError(f"config file {plan.config_file}: {exc}") from None

    if using_gpu:
        devices_of(None)   # the mapping's own errors first, whatever this machine has
        if plan.hostfile is not None:   # across hosts: this host checks the GPUs of its own ranks only
            _check_gpus_across_hosts(plan, flat, cuda_devices)
        else:
            if cuda_devices is None:
                cuda_devices = _cuda_devices()
            if not cuda_devices:
                raise ConfigError(f"config file {plan.config_file}: device_args.using_gpu=True but this machine has "
                                  f"no CUDA device (torch sees none): set device_args.using_gpu: false to run on CPU")
    devices = devices_of(cuda_devices if using_gpu and plan.hostfile is None else None)
    precision = flat.get("fedpft_precision", "fp32")
    if precision == "fp16" and not using_gpu:
        raise _bad(plan, "fedpft_precision", precision, "fp32 or bf16 on CPU (fp16 needs CUDA and its gradient "
                                                        "scaler: set device_args.using_gpu: true on a GPU node)")
    return devices


def _check_gpus_across_hosts(plan, flat, cuda_devices: Optional[int]) -> None:
    """With a hostfile, FedML's GPU mapping and Open MPI's placement must group the ranks on hosts alike (FedML
    picks a rank's GPU by its position in the mapping, not by the host it runs on), and only the GPUs of the ranks
    this host runs can be checked here: the launching host may hold none of them, or no GPU at all."""
    from ..settings import gpu_mapping
    from . import hosts as mpi_hosts

    slots = gpu_mapping(flat["gpu_mapping_file"], str(flat["gpu_mapping_key"]))
    placed = mpi_hosts.place_ranks(plan.hosts, plan.num_processes)
    mapped = [host for host, _ in slots]
    if _host_runs(mapped) != _host_runs(placed):
        raise ConfigError(f"config file {plan.config_file}: gpu mapping file {flat['gpu_mapping_file']} key "
                          f"{flat['gpu_mapping_key']!r} groups the ranks on hosts as {_describe_runs(mapped)} but "
                          f"hostfile {plan.hostfile} places them {_describe_runs(placed)}: list the hostfile's hosts "
                          f"in its order in the mapping, each with as many processes as it runs ranks")
    local = [rank for rank, host in enumerate(placed) if _is_this_host(host)]
    if not local:
        return   # every rank runs elsewhere: their hosts' GPUs are theirs to check
    if cuda_devices is None:
        cuda_devices = _cuda_devices()
    for rank in local:
        if slots[rank][1] >= cuda_devices:
            raise ConfigError(f"config file {plan.config_file}: rank {rank} runs on this host ({placed[rank]}, by "
                              f"hostfile {plan.hostfile}) on GPU {slots[rank][1]} of the mapping; this host has "
                              f"{cuda_devices} visible GPU(s): set device_args.using_gpu: false to run on CPU, or "
                              f"give this host's ranks GPUs it has")


def _host_runs(hosts: List[str]) -> List[int]:
    """The lengths of the runs of consecutive ranks on one host: ``[a, a, b] -> [2, 1]``."""
    return [len(list(run)) for _, run in itertools.groupby(hosts)]


def _describe_runs(hosts: List[str]) -> str:
    parts, start = [], 0
    for host, run in itertools.groupby(hosts):
        count = len(list(run))
        parts.append(f"{host}: rank {start}" if count == 1 else f"{host}: ranks {start}-{start + count - 1}")
        start += count
    return "(" + ", ".join(parts) + ")"


def _is_this_host(name: str) -> bool:
    """Whether a hostfile's host (``[user@]name`` or an address) is the machine the launcher runs on."""
    import socket

    name = name.rsplit("@", 1)[-1]
    own = {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()}
    try:
        own.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return name in own or name.startswith("127.")


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def max_tokens(model_config) -> Optional[int]:
    """The longest token sequence a text model takes (None when its config does not say)."""
    positions = getattr(model_config, "max_position_embeddings", None)
    if not is_int(positions):
        return None
    if model_config.model_type in PADDING_OFFSET_TYPES:
        positions -= int(getattr(model_config, "pad_token_id", None) or 0) + 1
    return positions


def check_loaded(plan, settings, task, model_config, devices: Optional[Dict[int, str]] = None) -> Preflight:
    """Settings against what was loaded: the FM takes the task's inputs (modality, token length,
    image channels), the LoRA rank fits the hidden size, the public set holds ``public_size``."""
    from ..core.arch import get_arch, num_layers

    config = settings.fedpft
    vision = get_arch(model_config.model_type).modality == "image"
    if vision != (task.modality == "image"):
        kind = "an image model (model_type vit)" if task.modality == "image" else "a text model"
        raise _bad(plan, "model", settings.model, f"{kind} for the {task.modality} task {task.name!r} "
                                                  f"(this model's type is {model_config.model_type})")
    limit = None if vision else max_tokens(model_config)
    if not vision:
        if config.max_length < 2:
            raise _bad(plan, "fedpft_max_length", config.max_length, "an integer >= 2 (a special token "
                                                                     "and one text token at least)")
        if limit is not None and config.max_length > limit:
            raise _bad(plan, "fedpft_max_length", config.max_length,
                       f"at most {limit}, the longest input model {settings.model} takes "
                       f"(max_position_embeddings {model_config.max_position_embeddings})")
    else:
        _check_channels(plan, settings, task, model_config)
    hidden = int(model_config.hidden_size)
    if config.lora_r > hidden:
        raise _bad(plan, "fedpft_lora_r", config.lora_r, f"at most the hidden size {hidden} of model {settings.model}")
    if config.uses_sub_model:
        _check_neurons(plan, settings, model_config)
    _check_task_kind(plan, settings, task, model_config)
    public = _public_examples(plan, settings, task)
    return Preflight(model=settings.model, model_type=model_config.model_type,
                     num_layers=num_layers(model_config), hidden_size=hidden, max_tokens=limit, task=task.name,
                     modality=task.modality, num_labels=task.num_labels, train_examples=len(task.train_labels),
                     test_examples=len(task.test_labels), public_examples=public, settings=settings,
                     devices=devices)


def _check_task_kind(plan, settings, task, model_config) -> None:
    """The task kind fits the model (decoders: instruction or language modelling; others: classification), and
    a decoder's task fits its tokenizer: every label answer has tokens, every prompt + answer fits
    ``fedpft_max_length`` (all examples are measured: a prompt is never cut)."""
    from ..core.arch import is_decoder
    from ..errors import DataError
    from ..models import load_tokenizer
    from ..tasks import get_task_kind, known_task_kinds, resolve_task_kind

    requested = settings.fedpft.task_kind
    try:
        kind = resolve_task_kind(requested, model_config)
    except ConfigError:
        decoder = is_decoder(model_config)
        allowed = [k for k in known_task_kinds() if get_task_kind(k).causal_lm == decoder]
        what = "a decoder (causal LM)" if decoder else "not a decoder"
        raise _bad(plan, "fedpft_task_kind", requested, f"auto or {' or '.join(allowed)}: model {settings.model} "
                                                        f"(type {model_config.model_type}) is {what}") from None
    if kind.causal_lm:
        try:
            kind.check(load_tokenizer(settings.model, settings.cache_dir), task, settings.fedpft)
        except DataError as exc:
            raise ConfigError(f"config file {plan.config_file}: {exc}") from None


def _check_channels(plan, settings, task, model_config) -> None:
    """Images are converted 1 <-> 3 channels (grey, RGB); any other mismatch cannot be fed to the model."""
    images = task.train_inputs
    channels = 1 if images.ndim == 3 else int(images.shape[-1])
    wanted = int(getattr(model_config, "num_channels", 3))
    if channels != wanted and {channels, wanted} != {1, 3}:
        raise _bad(plan, "model", settings.model, f"a model for {channels}-channel images: task {task.name!r} has "
                                                  f"{channels} channels, the model takes {wanted}")


def _check_neurons(plan, settings, model_config) -> None:
    """The sub-FM keeps at least one FFN neuron per compressed layer; neuron-level alignment updates at least one."""
    from ..core.arch import ffn_size

    config, width = settings.fedpft, ffn_size(model_config)
    kept = round(config.ffn_keep_ratio * width)
    if kept < 1:
        raise _bad(plan, "fedpft_ffn_keep_ratio", config.ffn_keep_ratio,
                   f"more than {0.5 / width:.2g}: this keeps no neuron of the {width} in each FFN of {settings.model}")
    if config.neuron_alignment and round(config.align_update_ratio * kept) < 1:
        raise _bad(plan, "fedpft_align_update_ratio", config.align_update_ratio,
                   f"more than {0.5 / kept:.2g}: this updates no neuron of the {kept} the sub-FM keeps per layer")


def _public_examples(plan, settings, task) -> int:
    """The server's public set, loaded as the server will: it must hold ``fedpft_public_size`` examples."""
    from ..data.public import default_public_name, load_public

    config = settings.fedpft
    with _quiet("fedpft_algo.data.public"):   # its "only N usable examples" warning becomes the error below
        public = load_public(config.public_dataset, task=task, max_examples=config.public_size, seed=settings.seed)
    if len(public) < config.public_size:
        name = config.public_dataset or default_public_name(task)
        raise _bad(plan, "fedpft_public_size", config.public_size,
                   f"at most {len(public)}, the examples of public set {name!r} that are not in task {task.name!r}")
    return len(public)


@contextlib.contextmanager
def _quiet(name: str):
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def summary_rows(plan, found: Preflight) -> Dict[str, str]:
    """``fedpft run --check``'s summary: what would start, on what."""
    settings = found.settings
    processes = "1 process (server and clients)" if plan.backend == "sp" else \
        f"{plan.num_processes} processes (server + {plan.num_clients} clients)"
    tokens = f", max length {settings.fedpft.max_length} of {found.max_tokens}" if found.max_tokens else ""
    partition = settings.partition_method
    if partition == "hetero":
        partition += f" (alpha {settings.partition_alpha:g})"
    resumed = f", resuming after round {plan.resume_round}" if plan.resume_round else ""
    rows = {
        "topology": f"{plan.training_type}/{plan.backend}: {processes}",
        "model": f"{found.model} ({found.model_type}, {found.num_layers} layers, hidden {found.hidden_size}{tokens})",
        "task": f"{found.task} ({found.modality}, {found.num_labels} classes, {found.train_examples} train / "
                f"{found.test_examples} test examples); public set {found.public_examples} examples",
        "clients": f"{settings.client_num_in_total} in total, {plan.num_clients} per round, {partition}",
        "method": f"{settings.fedpft.method}, {plan.comm_round} rounds{resumed}",
        "devices": _devices_row(found.devices, settings.fedpft.precision),
    }
    if plan.hosts:
        from .hosts import describe_placement

        rows["hosts"] = f"{describe_placement(plan.hosts, plan.num_processes)} (by slot, from {plan.hostfile})"
    return rows


def _devices_row(devices: Optional[Dict[int, str]], precision: str) -> str:
    """``rank 0 cuda:0, ranks 1-2 cuda:1, precision bf16``: consecutive ranks on one device grouped."""
    groups = []
    for rank, device in sorted((devices or {0: "cpu"}).items()):
        if groups and groups[-1][2] == device and groups[-1][1] == rank - 1:
            groups[-1][1] = rank
        else:
            groups.append([rank, rank, device])
    spans = [f"rank {a} {d}" if a == b else f"ranks {a}-{b} {d}" for a, b, d in groups]
    return ", ".join(spans) + f"; precision {precision}"
