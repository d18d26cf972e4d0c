"""FedOT: federated Offsite-Tuning, the layer-drop baseline FedPFT is compared with (FedPFT §5).

Offsite-Tuning (Xiao et al., 2023) gives clients an *emulator* of the FM: the bottom and top
layers are kept whole as the trainable "adapter", and the middle is a uniformly layer-dropped
copy of the FM's middle layers, distilled to the FM before FL and frozen on clients. Clients
train LoRA on attention of **only the adapter layers** plus the task head; the server maps those
LoRA tensors back onto the FM's layers (emulator layer ``i`` is FM layer ``layer_map[i]``).

Adapter size: ``max(1, L // 6)`` layers at the bottom and as many at the top (6-layer MiniLM:
1 + 1; 12-layer BERT/MPNet-base: 2 + 2, as in Offsite-Tuning).

**Budget rule (same client parameter budget as FedPFT's sub-FM).** Let ``P_sub`` be the number
of transformer-layer parameters of the sub-FM that FedPFT builds with the same settings
(``ffn_keep_ratio``, ``retained_layers``). The emulator keeps ``m`` of the ``M`` middle layers,
``1 <= m <= M``, with ``m`` chosen so that its transformer-layer parameter count is as close as
possible to ``P_sub`` (ties go to the smaller emulator), so it is never more than half a layer
above it. MiniLM-L6: sub-FM 7,103,232 of 10,646,784 (= 4.00 layers) -> 1 + 2 + 1 = 4 layers;
BERT-base shape: 47 Mi of 81 Mi (= 6.6 layers) -> 2 + 3 + 2 = 7 layers (the paper's "7 full
layers of 12").

**Uniform layer drop.** The ``M`` middle layers are split into ``m`` contiguous, near-equal
segments; each emulator layer is the first FM layer of its segment and *stands for* the whole
segment: in distillation its output is matched to the output of the segment's last FM layer
(the teacher-RMS-normalised MSE of FedPFT's layer-level alignment, over the middle and top
emulator layers; only the middle layers train). The kept FM indices are stored on the
emulator's config as ``fedpft_layer_map``, so a client builds the same skeleton from the FM's
configuration alone (like ``fedpft_ffn_widths`` for the sub-FM).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import re
import time
import types
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..core.alignment import AlignmentReport, _distil, _OnlyTrain, evaluate_alignment
from ..core.arch import arch_of, find_layers, get_arch
from ..core.compression import build_sub_model_skeleton, encoder_parameters
from ..config import FedPFTConfig
from ..core.lora import copy_checked_, is_trainable_name, lora_config
from .base import Method, Proxy
from .cache import cache_key, layer_align_options, load_or_align

logger = logging.getLogger(__name__)

LAYER_MAP_ATTR = "fedpft_layer_map"


# ---------------------------------------------------------------------- the budget rule
def adapter_size(num_full_layers: int) -> int:
    """Adapter layers kept at the bottom and (as many) at the top: 1 for 6 layers, 2 for 12."""
    return max(1, num_full_layers // 6)


def _segments(first: int, stop: int, parts: int) -> List[range]:
    """``range(first, stop)`` split into ``parts`` contiguous near-equal segments (larger ones first)."""
    total = stop - first
    base, extra = divmod(total, parts)
    out, start = [], first
    for index in range(parts):
        size = base + (1 if index < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def uniform_layer_map(num_full_layers: int, kept_middle: int) -> Tuple[int, ...]:
    """FM layer indices the emulator keeps: adapters whole, ``kept_middle`` middle layers uniformly."""
    b = adapter_size(num_full_layers)
    middle = num_full_layers - 2 * b
    if middle <= 0:
        return tuple(range(num_full_layers))  # too shallow to drop anything: the emulator is the FM
    assert 1 <= kept_middle <= middle, f"cannot keep {kept_middle} of {middle} middle layers"
    kept = [segment.start for segment in _segments(b, num_full_layers - b, kept_middle)]
    return tuple(range(b)) + tuple(kept) + tuple(range(num_full_layers - b, num_full_layers))


def _parameter_budget(model_config, config: FedPFTConfig) -> Tuple[List[int], int]:
    """(parameters of each FM layer, transformer-layer parameters of FedPFT's sub-FM), from shapes only.

    Only the transformer layers are counted, so the models are built without a task head."""
    from transformers import AutoModel

    with torch.device("meta"):  # shapes only: nothing is allocated, no weights are read
        full = AutoModel.from_config(copy.deepcopy(model_config))
        sub = build_sub_model_skeleton(model_config, config, model_class=AutoModel)  # FedPFT's, same settings
    per_layer = [sum(p.numel() for p in layer.parameters()) for layer in find_layers(full)]
    return per_layer, encoder_parameters(sub)


def emulator_layer_map(model_config, config: Optional[FedPFTConfig] = None) -> Tuple[int, ...]:
    """The FM layers the emulator keeps (stored on an emulator's config, else by the budget rule)."""
    stored = getattr(model_config, LAYER_MAP_ATTR, None)
    if stored is not None:
        return tuple(int(i) for i in stored)
    assert config is not None, "need a FedPFTConfig when the model config carries no layer map"
    per_layer, budget = _parameter_budget(model_config, config)
    total = len(per_layer)
    b = adapter_size(total)
    if total - 2 * b <= 0:
        return tuple(range(total))

    def cost(m: int) -> Tuple[int, int]:
        params = sum(per_layer[i] for i in uniform_layer_map(total, m))
        return abs(params - budget), m  # closest to the sub-FM's budget; ties: the smaller emulator

    kept_middle = min(range(1, total - 2 * b + 1), key=cost)
    layer_map = uniform_layer_map(total, kept_middle)
    logger.info("FedOT emulator: FM layers %s (%d of %d; sub-FM budget %d parameters)",
                list(layer_map), len(layer_map), total, budget)
    return layer_map


def adapter_layers(layer_map: Sequence[int]) -> Tuple[int, ...]:
    """Emulator indices of the adapter (trainable) layers: the bottom and top ``adapter_size`` layers."""
    total = layer_map[-1] + 1
    b = adapter_size(total)
    n = len(layer_map)
    if n <= 2 * b:
        return tuple(range(n))
    return tuple(range(b)) + tuple(range(n - b, n))


def distillation_targets(layer_map: Sequence[int]) -> Tuple[int, ...]:
    """For each emulator layer, the FM layer whose output it stands for (the last one it replaces)."""
    total = layer_map[-1] + 1
    return tuple(layer_map[i + 1] - 1 for i in range(len(layer_map) - 1)) + (total - 1,)


# ---------------------------------------------------------------------- building emulators
def _replace_layers_(model: nn.Module, layer_map: Sequence[int]) -> None:
    """Keep only FM layers ``layer_map`` (in that order) in ``model``, in place; record the map."""
    spec = arch_of(model)
    layers = find_layers(model)
    name = next(n for n, m in model.named_modules() if m is layers)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    kept = nn.ModuleList([layers[i] for i in layer_map])
    for index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):  # decoder caches index layers by position
                module.layer_idx = index
    setattr(parent, child, kept)
    setattr(model.config, spec.num_layers_attr, len(layer_map))
    model.config.update({LAYER_MAP_ATTR: [int(i) for i in layer_map]})
    assert len(find_layers(model)) == len(layer_map)


def build_emulator(full_model: nn.Module, config: FedPFTConfig) -> nn.Module:
    """The (undistilled) emulator: a copy of ``full_model`` (untouched) with only the mapped layers."""
    layer_map = emulator_layer_map(full_model.config, config)
    emulator = copy.deepcopy(full_model)
    _replace_layers_(emulator, layer_map)
    return emulator


def build_emulator_skeleton(model_config, config: Optional[FedPFTConfig] = None, *, model_class) -> nn.Module:
    """The emulator's architecture from configuration alone (random weights; a client fills it).

    ``model_class``: the transformers auto class with the task's head (``models.model_class_for``)."""
    layer_map = emulator_layer_map(model_config, config)
    emulator_config = copy.deepcopy(model_config)
    setattr(emulator_config, get_arch(model_config.model_type).num_layers_attr, len(layer_map))
    emulator_config.update({LAYER_MAP_ATTR: list(layer_map)})
    return model_class.from_config(emulator_config)


def add_emulator_lora(emulator: nn.Module, config: FedPFTConfig):
    """LoRA on attention of the adapter layers only, plus the whole task head."""
    from peft import get_peft_model

    spec = arch_of(emulator)
    layer_map = emulator_layer_map(emulator.config)
    lora = dataclasses.replace(lora_config(emulator.config.model_type, config, emulator),
                               layers_to_transform=list(adapter_layers(layer_map)),
                               layers_pattern=spec.layers.rsplit(".", 1)[-1])
    return get_peft_model(emulator, lora)


# ---------------------------------------------------------------------- plug-in
def full_model_names(state: Mapping[str, torch.Tensor], layer_map: Sequence[int],
                     layers_path: str) -> "OrderedDict[str, torch.Tensor]":
    """Rename emulator tensors to the FM's names: layer index ``i`` becomes ``layer_map[i]``."""
    pattern = re.compile(r"(^|\.)" + re.escape(layers_path) + r"\.(\d+)\.")

    def rename(name: str) -> str:
        def swap(match):
            index = int(match.group(2))
            assert index < len(layer_map), f"{name}: emulator layer {index} is not in the layer map {list(layer_map)}"
            return f"{match.group(1)}{layers_path}.{layer_map[index]}."
        return pattern.sub(swap, name, count=1)

    return OrderedDict((rename(name), tensor) for name, tensor in state.items())


def plug_in_mapped_(full_model: nn.Module, state: Mapping[str, torch.Tensor], layer_map: Sequence[int]) -> None:
    """Load the emulator's adapter LoRA + head into the FM's mapped layers, in place, with strict checks.

    Every tensor must land on a LoRA/head tensor of the FM with the same shape, and the whole
    head must be given. FM layers without a mapped adapter keep their LoRA as initialised
    (B = 0: no effect); nothing else of the FM changes. (:func:`fedpft_algo.core.lora.plug_in_` stays
    strict in both directions for FedPFT, where every LoRA tensor has a counterpart.)
    """
    mapped = full_model_names(state, layer_map, arch_of(full_model).layers)
    own = {name: t for name, t in full_model.state_dict().items() if is_trainable_name(name)}
    unknown = sorted(set(mapped) - set(own))
    head = {name for name in own if ".modules_to_save." in name}
    missing = sorted(head - set(mapped))
    if unknown or missing:
        raise KeyError(f"mapped plug-in keys do not match the FM: unknown {unknown[:3]}, missing head {missing[:3]}")
    copy_checked_(own, mapped, "FM")


# ---------------------------------------------------------------------- distillation
class _TeacherTargets(nn.Module):
    """The FM, answering with the hidden states of the FM layers the emulator layers stand for."""

    def __init__(self, full_model: nn.Module, targets: Sequence[int]):
        super().__init__()
        self.full_model, self.targets = full_model, tuple(targets)

    def forward(self, **inputs):
        hidden = self.full_model(**inputs).hidden_states
        return types.SimpleNamespace(hidden_states=(hidden[0],) + tuple(hidden[t + 1] for t in self.targets))


def align_emulator_(full_model: nn.Module, emulator: nn.Module, batches, eval_batches: Sequence, *, steps: int,
                    lr: float = 6e-4, weight_decay: float = 0.01, warmup_ratio: float = 0.05,
                    max_grad_norm: float = 1.0, device="cpu") -> AlignmentReport:
    """Distil the emulator's middle layers to the FM, in place (teacher frozen, adapters frozen)."""
    start = time.perf_counter()
    layer_map = emulator_layer_map(emulator.config)
    adapters = set(adapter_layers(layer_map))
    middle = [i for i in range(len(layer_map)) if i not in adapters]
    loss_layers = [i for i in range(len(layer_map)) if i >= (min(middle) if middle else len(layer_map))]
    teacher = _TeacherTargets(full_model, distillation_targets(layer_map)).eval()
    before = evaluate_alignment(teacher, emulator, eval_batches, loss_layers, device)
    emulator_layers = find_layers(emulator)
    names = {id(p): n for n, p in emulator.named_parameters()}
    params = [p for i in middle for p in emulator_layers[i].parameters()]
    done = 0
    if params and steps > 0:
        with _OnlyTrain(emulator, params):
            done = _distil(teacher, emulator, params, batches, loss_layers, steps=steps, lr=lr,
                           weight_decay=weight_decay, warmup_ratio=warmup_ratio, max_grad_norm=max_grad_norm,
                           device=device, desc="FedOT emulator distillation")
    after = evaluate_alignment(teacher, emulator, eval_batches, loss_layers, device)
    report = AlignmentReport("layer", done, time.perf_counter() - start, before, after, [names[id(p)] for p in params])
    logger.info("FedOT emulator distillation: %d steps, loss %.4f -> %.4f (%.1fs)",
                done, report.mean_before, report.mean_after, report.seconds)
    return report


# ---------------------------------------------------------------------- the method
@dataclass(frozen=True)
class FedOT(Method):
    """Federated Offsite-Tuning: clients hold the distilled emulator and tune LoRA on its adapter layers."""

    client_kind = "emulator"

    def layer_alignment(self, config) -> bool:
        return config.layer_align_steps > 0  # the emulator is distilled like FedPFT's layer-level alignment

    def build_proxy(self, full_model, config, public_batches, eval_batches, *, cache_dir=None, cache_extra="",
                    device="cpu") -> Proxy:
        """Build the emulator and distil it (cached like the aligned sub-FM, under a key of its own)."""
        emulator = build_emulator(full_model, config)
        if not self.layer_alignment(config):
            return Proxy(emulator)
        layer_map = emulator_layer_map(emulator.config)

        def align():
            full_model.to(device)
            emulator.to(device)
            return align_emulator_(full_model, emulator, public_batches, eval_batches,
                                   **layer_align_options(config), device=device)

        path = None
        if cache_dir is not None:
            key = cache_key(full_model, config, f"{cache_extra}|fedot-emulator:{list(layer_map)}")
            path = Path(cache_dir) / "emulators" / f"{key}.safetensors"
        report, from_cache = load_or_align(emulator, path, align, "FedOT emulator distillation")
        return Proxy(emulator, report, from_cache)

    def client_skeleton(self, model_config, config, *, model_class):
        return build_emulator_skeleton(model_config, config, model_class=model_class)

    def add_client_lora(self, model, config):
        return add_emulator_lora(model, config)

    def full_model_names(self, state, proxy, full_model):
        return full_model_names(state, emulator_layer_map(proxy.config), arch_of(full_model).layers)

    def plug_in_(self, full_model, state, proxy) -> None:
        plug_in_mapped_(full_model, state, emulator_layer_map(proxy.config))
