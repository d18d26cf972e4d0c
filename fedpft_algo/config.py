"""A run's configuration: the FedML yaml read once, into typed objects.

``FedPFTConfig`` holds every FedPFT setting, with the defaults of the paper (Peng et al.,
"FedPFT: Federated Proxy Fine-Tuning of Foundation Models", IJCAI 2024). In a FedML yaml the
fields live in a ``fedpft_args:`` section with the prefix ``fedpft_`` (FedML flattens all
sections into one ``args`` namespace, so the prefix keeps them from colliding with FedML's keys).
The launcher, the bench and ``fedpft predict`` read a yaml with :func:`read_config` and build
typed objects from its flat view (:func:`flatten`); a FedML process builds them from its ``args``.
:class:`fedpft_algo.settings.RunSettings` adds the FedML keys the plugin uses.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import yaml

from .errors import ConfigError

Sections = Dict[str, Dict[str, Any]]   # a FedML yaml: section -> key -> value

PREFIX = "fedpft_"

# The built-in methods: the yaml vocabulary of ``fedpft_method``. What a method decides lives in
# :mod:`fedpft_algo.methods`, which imports this module and never the reverse: it binds its registry
# here when imported (``fedpft_algo/__init__`` imports it), so that validation accepts every registered
# name, a method registered at run time too, and the properties below ask the config's method.
METHODS = ("fedpft", "fedpft_n", "fedpft_b", "fedpft_d", "fedpetuning", "fedot")
_registry = None  # (known_methods, get_method) of fedpft_algo.methods, once it has bound itself
STATISTICS = ("auto", "apoz", "mean_abs")
# What clients learn and how the server scores it (fedpft_algo.tasks): "auto" lets the model decide
# (decoders -> instruction, encoders and ViTs -> classification).
TASK_KINDS = ("auto", "classification", "instruction", "language_modeling")
DEFAULT_PROMPT_TEMPLATE = "{text}\nAnswer with one of: {choices}."
AGGREGATIONS = ("weighted", "uniform")
PRECISIONS = ("fp32", "bf16", "fp16")   # fedpft_precision: see fedpft_algo.core.precision
SALIENCIES = ("weight", "activation")
LAYER_KEEPS = ("uniform", "sensitivity")


@dataclass(frozen=True)
class FedPFTConfig:
    # Which algorithm runs: the full method, its ablations (no alignment / before FL only /
    # during FL only) or the paper's baselines (clients hold the FM; Offsite-Tuning emulator).
    method: str = "fedpft"

    # --- sub-FM construction (paper: keep 768 of 3072 FFN neurons, first and last layer whole)
    ffn_keep_ratio: float = 0.25
    # Layers copied whole. Negative indices count from the end: (0, -1) = first and last.
    retained_layers: Tuple[int, ...] = (0, -1)
    # Neuron saliency: "weight" (the paper: weight norms, no data) or "activation" (the weight norm
    # times the neuron's mean |activation| on the server's public data, as Wanda does).
    saliency: str = "weight"
    # Per-layer keep ratios: "uniform" (the paper) or "sensitivity" (each compressed layer's share of the
    # same total FFN budget set by its measured sensitivity on public data, bounded to [0.1, 0.9]).
    layer_keep: str = "uniform"

    # --- client fine-tuning: LoRA on attention Q, K, V, O of every layer + the task head
    lora_r: int = 8
    lora_alpha: int = 48
    lora_dropout: float = 0.1
    # Recompute each layer's activations in the backward pass instead of keeping them (transformers'
    # gradient checkpointing) on clients, FedPFT's and FedPETuning's alike: less client memory, more time.
    gradient_checkpointing: bool = False
    # How the server averages client uploads: by sample count (the paper) or a plain mean.
    aggregation: str = "weighted"
    # The frozen backbone's own dropout (hidden, attention) on clients; false (the default since issue 15:
    # less client time and memory, no accuracy cost measured in FL) = those probabilities 0 (LoRA's and the
    # head's dropout stay); true = the paper's clients, dropout as the FM was pre-trained.
    client_backbone_dropout: bool = False
    # One LoRA dropout mask per layer input shared by Q, K and V (they read the same input); default on.
    shared_lora_dropout: bool = True
    # torch.compile of the client model (compiles once per process, then faster steps where it pays).
    compile: bool = False

    # --- layer-level alignment, on the server before FL (paper: 5 epochs of public data;
    # here a step budget sized for the machine)
    layer_align_steps: int = 300
    layer_align_batch_size: int = 16
    layer_align_lr: float = 6e-4
    layer_align_warmup_ratio: float = 0.05
    layer_align_weight_decay: float = 0.01
    align_max_grad_norm: float = 1.0
    # Weight of an output-level term (the final hidden state's normalised MSE) beside the per-layer
    # loss in layer-level alignment (0: the paper's per-layer loss alone).
    align_output_weight: float = 0.0

    # --- neuron-level alignment, on the server every ``align_interval`` rounds
    align_interval: int = 10          # t
    align_update_ratio: float = 0.5   # p: share of each compressed layer's neurons updated
    # "apoz" (paper), "mean_abs" (mean |activation|) or "auto": apoz for encoders (ReLU/GELU FFNs),
    # mean_abs for decoders (SiLU-gated FFNs: almost no activation is exactly zero, APoZ has no signal)
    align_statistic: str = "auto"
    neuron_align_steps: int = 20
    neuron_align_batch_size: int = 16
    neuron_align_lr: float = 6e-4

    # --- differential privacy on client uploads (0 = off): clip each client's round update to
    # this L2 norm and add Gaussian noise of std noise_multiplier * clip (see privacy.py)
    dp_clip_norm: float = 0.0
    dp_noise_multiplier: float = 0.0
    dp_delta: float = 1e-5

    # --- what clients learn (fedpft_algo.tasks): classification head, instruction answers, or LM
    task_kind: str = "auto"
    # instruction tasks: the user's turn ({text}: the input, pairs "first\nsecond"; {choices}: the
    # answers joined by ", ") and the answer text of each label (() = the label names)
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    label_answers: Tuple[str, ...] = ()

    # --- columns of a generic data set (CSV/JSON/Parquet/HF); () / None = guess
    text_columns: Tuple[str, ...] = ()
    label_column: Optional[str] = None

    # --- server public data and text length
    public_dataset: Optional[str] = None   # None: a different corpus than the task (see data)
    public_size: int = 2000
    max_length: int = 64

    # --- where the aligned sub-FM and tokenised data are cached ("" = ~/.cache/fedpft)
    cache_dir: str = ""

    # --- server checkpoint (for ``fedpft run --resume``) every k rounds and after the last; 0 = never
    checkpoint_interval: int = 1

    # --- TensorBoard event files of the per-round metrics under <run dir>/tensorboard/ (server)
    tensorboard: bool = False

    # --- mixed precision of client training, both alignments and evaluation (torch.autocast;
    # --- LoRA, head and optimizer state stay fp32): fp32 | bf16 | fp16 (CUDA only, with a grad scaler)
    precision: str = "fp32"

    def __post_init__(self) -> None:
        _check_types(self)
        _check_choice("method", self.method, method_names())
        _check_choice("align_statistic", self.align_statistic, STATISTICS)
        _check_choice("task_kind", self.task_kind, TASK_KINDS)
        if "{text}" not in self.prompt_template:
            raise _error("prompt_template", self.prompt_template, "a template with a {text} field (the input)")
        if any(not a.strip() for a in self.label_answers):
            raise _error("label_answers", list(self.label_answers), "non-empty answer texts, one per label")
        _check_choice("aggregation", self.aggregation, AGGREGATIONS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("saliency", self.saliency, SALIENCIES)
        _check_choice("layer_keep", self.layer_keep, LAYER_KEEPS)
        _check_range("ffn_keep_ratio", self.ffn_keep_ratio, 0.0, 1.0, "a number in (0, 1]", low_open=True)
        _check_range("align_update_ratio", self.align_update_ratio, 0.0, 1.0, "a number in (0, 1]", low_open=True)
        _check_range("lora_dropout", self.lora_dropout, 0.0, 1.0, "a number in [0, 1)", high_open=True)
        _check_range("layer_align_warmup_ratio", self.layer_align_warmup_ratio, 0.0, 1.0, "a number in [0, 1]")
        for name in ("lora_r", "lora_alpha", "align_interval", "layer_align_batch_size",
                     "neuron_align_batch_size", "public_size", "max_length"):
            if getattr(self, name) < 1:
                raise _error(name, getattr(self, name), "an integer >= 1")
        if self.checkpoint_interval < 0:
            raise _error("checkpoint_interval", self.checkpoint_interval, "an integer >= 0 (0: no checkpoints)")
        for name in ("layer_align_steps", "neuron_align_steps"):
            if getattr(self, name) < 0:
                raise _error(name, getattr(self, name), "an integer >= 0 (0 disables that alignment)")
        for name in ("layer_align_lr", "neuron_align_lr", "align_max_grad_norm"):
            if not getattr(self, name) > 0:
                raise _error(name, getattr(self, name), "a number > 0")
        if self.dp_clip_norm < 0 or self.dp_noise_multiplier < 0:
            name = "dp_clip_norm" if self.dp_clip_norm < 0 else "dp_noise_multiplier"
            raise _error(name, getattr(self, name), "a number >= 0 (0 disables differential privacy)")
        if self.dp_noise_multiplier > 0 and self.dp_clip_norm == 0:
            raise _error("dp_noise_multiplier", self.dp_noise_multiplier,
                         "0 unless fedpft_dp_clip_norm > 0 (noise is calibrated to the clipping norm)")
        _check_range("dp_delta", self.dp_delta, 0.0, 1.0, "a number in (0, 1)", low_open=True, high_open=True)
        for name in ("layer_align_weight_decay", "align_output_weight"):
            if getattr(self, name) < 0:
                raise _error(name, getattr(self, name), "a number >= 0")
        if len(set(self.retained_layers)) != len(self.retained_layers):
            raise _error("retained_layers", list(self.retained_layers), "distinct layer indices")

    # ------------------------------------------------------------------ derived settings
    def resolve_retained_layers(self, num_layers: int) -> Tuple[int, ...]:
        """Retained layer indices in ``[0, num_layers)``, sorted; negative ones count from the end."""
        resolved = []
        for index in self.retained_layers:
            if not -num_layers <= index < num_layers:
                raise _error("retained_layers", list(self.retained_layers),
                             f"layer indices in [-{num_layers}, {num_layers - 1}] for this {num_layers}-layer model")
            resolved.append(index % num_layers)
        if len(set(resolved)) != len(resolved):
            raise _error("retained_layers", list(self.retained_layers), "indices naming distinct layers")
        if self.uses_sub_model and len(resolved) == num_layers:
            # nothing left to compress (FedPFT) or to emulate (FedOT): the "sub-FM" would be the FM itself
            raise _error("retained_layers", list(self.retained_layers),
                         f"fewer than all {num_layers} layers of this model kept whole, so that the sub-FM is "
                         f"smaller than the FM (fedpft_method: fedpetuning tunes the whole FM)")
        return tuple(sorted(resolved))

    def compressed_layers(self, num_layers: int) -> Tuple[int, ...]:
        retained = set(self.resolve_retained_layers(num_layers))
        return tuple(i for i in range(num_layers) if i not in retained)

    @property
    def uses_sub_model(self) -> bool:
        """Whether clients hold a proxy smaller than the FM (False for FedPETuning: clients hold the FM)."""
        return _method_of(self).uses_proxy

    @property
    def layer_alignment(self) -> bool:
        """Layer-level alignment before FL (FedPFT, _B; FedOT distils its emulator the same way)."""
        return _method_of(self).layer_alignment(self)

    @property
    def neuron_alignment(self) -> bool:
        """Neuron-level alignment during FL (FedPFT, _D)."""
        return _method_of(self).neuron_alignment(self)

    def is_alignment_round(self, round_idx: int, comm_round: int) -> bool:
        """Whether neuron-level alignment runs after round ``round_idx`` (0-based).

        It runs after every t-th round, but not after the last one: its result would never
        reach a client (the authors' code crashes there).
        """
        if not self.neuron_alignment:
            return False
        return (round_idx + 1) % self.align_interval == 0 and round_idx + 1 < comm_round

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    def to_args_dict(self) -> dict:
        """The yaml ``fedpft_args`` section for this config."""
        return {PREFIX + k: v for k, v in self.to_dict().items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, prefix: str = "") -> "FedPFTConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            name = key[len(prefix):]
            if name not in names:
                close = difflib.get_close_matches(name, sorted(names), n=1)
                hint = f"; did you mean {prefix}{close[0]}?" if close else ""
                raise ConfigError(f"unknown config key {key!r}{hint} (known: {', '.join(prefix + n for n in sorted(names))})")
            if isinstance(value, list):
                value = tuple(value)
            kwargs[name] = value
        return cls(**kwargs)

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> "FedPFTConfig":
        """Build from a flat view of a config (:func:`flatten`, FedML's ``args``): every key named ``fedpft_*``."""
        return cls.from_dict({k: v for k, v in flat.items() if k.startswith(PREFIX)}, prefix=PREFIX)

    @classmethod
    def from_sections(cls, config: Sections) -> "FedPFTConfig":
        """Build from a FedML yaml's sections (the ``fedpft_*`` keys of any section)."""
        return cls.from_flat(flatten(config))

    @classmethod
    def from_args(cls, args: Any) -> "FedPFTConfig":
        """Build from FedML's flattened ``args``."""
        return cls.from_flat(vars(args))


# ---------------------------------------------------------------------- the methods
def bind_method_registry(known_methods: Callable[[], Tuple[str, ...]], get_method: Callable[[str], Any]) -> None:
    """Called by :mod:`fedpft_algo.methods` on import: the names of the methods, and a method by name."""
    global _registry
    _registry = (known_methods, get_method)


def method_names() -> Tuple[str, ...]:
    """Every valid ``fedpft_method``: the built-ins, then the methods registered in this process."""
    return _registry[0]() if _registry is not None else METHODS


def _method_of(config: "FedPFTConfig"):
    if _registry is None:  # unreachable through the package: fedpft_algo/__init__ imports fedpft_algo.methods
        raise RuntimeError("fedpft_algo.methods is not imported: it binds the method registry to the config")
    return _registry[1](config.method)


# ---------------------------------------------------------------------- validation helpers
def _error(name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{PREFIX}{name}={value!r} is not allowed: expected {allowed}")


def _check_choice(name: str, value: str, allowed: Tuple[str, ...]) -> None:
    if value not in allowed:
        raise _error(name, value, "one of " + ", ".join(allowed))


def _check_range(name, value, low, high, allowed, low_open=False, high_open=False) -> None:
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        raise _error(name, value, allowed)


_HINTS = typing.get_type_hints(FedPFTConfig)


def _check_types(config: FedPFTConfig) -> None:
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        hint = _HINTS[f.name]
        if isinstance(value, list) and hint in (Tuple[int, ...], Tuple[str, ...]):
            value = tuple(value)
            object.__setattr__(config, f.name, value)
        if hint is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
            allowed = "an integer"
        elif hint is float:
            # NaN compares False with everything, so it would slip through every range check below
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
            allowed = "a number"
        elif hint is bool:
            ok = isinstance(value, bool)
            allowed = "true or false"
        elif hint is str:
            ok = isinstance(value, str)
            allowed = "a string"
        elif hint == Optional[str]:
            ok = value is None or isinstance(value, str)
            allowed = "a string or null"
        elif hint == Tuple[str, ...]:
            if isinstance(value, str):  # one column may be given as a plain string
                value = (value,)
                object.__setattr__(config, f.name, value)
            ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
            allowed = "a list of strings"
            if f.name == "text_columns":
                ok, allowed = ok and len(value) <= 2, "one or two column names"
        elif hint == Tuple[int, ...]:
            ok = isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            allowed = "a list of integers"
        else:  # pragma: no cover - a new field type without a check is a programming error
            raise TypeError(f"no type check for field {f.name}: {hint}")
        if not ok:
            raise _error(f.name, value, allowed)
        if hint is float:
            object.__setattr__(config, f.name, float(value))


# ====================================================================== the FedML yaml
def read_config(path: os.PathLike) -> Sections:
    """Read a FedML yaml: a mapping of non-empty sections, each a mapping of keys (else :class:`ConfigError`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"config file {path} is not valid YAML{line}: {problem}") from None
    if not isinstance(config, dict) or not config:
        raise ConfigError(f"config file {path} must be a mapping of sections (common_args:, train_args:, ...), "
                          f"got {type(config).__name__}")
    for section, keys in config.items():
        if keys is None or keys == {}:
            raise ConfigError(f"config file {path}: section {section!r} is empty (FedML cannot parse an empty "
                              f"section): add keys or remove it")
        if not isinstance(keys, dict):
            raise ConfigError(f"config file {path}: section {section!r} must be a mapping of keys, "
                              f"got {type(keys).__name__}")
    return config


def flatten(config: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """FedML's view of a config: every key of every section, later sections winning."""
    flat: Dict[str, Any] = {}
    for keys in config.values():
        if isinstance(keys, Mapping):
            flat.update(keys)
    return flat
