"""Sub-FM alignment by distillation from the FM (FedPFT §3.2 layer-level, §3.3 neuron-level).

Both levels minimise, over the compressed layers ``l``, the teacher-RMS-normalised MSE of the
layer outputs (each model running its own stack; padding positions excluded):

    L = mean_l  mean((H_l^T - H_l^S)^2) / mean((H_l^T)^2)

* Layer-level (server, before FL): teacher = FM, student = sub-FM; trainable = the compressed
  layers' FFN projections (weights, biases) and FFN LayerNorm; everything else frozen.
* Neuron-level (server, every t rounds): teacher = FM + the aggregated LoRA/head, student =
  sub-FM + the same LoRA/head; trainable = only the *updated* neurons' rows of W_in (and gate),
  their b_in entries and W_out columns, plus b_out and the FFN LayerNorm. Every other entry
  stays bit-identical.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from .arch import arch_of, find_layers, layer_linear
from .causal_lm import causal_lm_of
from .precision import autocast_for, backward_step, grad_scaler

logger = logging.getLogger(__name__)

Batch = Mapping[str, torch.Tensor]
# Told after each distillation step: (what runs, e.g. "layer-level alignment", steps done, steps, loss);
# once with 0 steps done (loss None) before the first.
Progress = Callable[[str, int, int, Optional[float]], None]
_PROGRESS: ContextVar[Optional[Progress]] = ContextVar("fedpft_alignment_progress", default=None)


@contextlib.contextmanager
def reporting(progress: Optional[Progress]) -> Iterator[None]:
    """Every distillation in the ``with`` block (also those started by code in between, such as the
    sub-FM cache or FedOT's emulator) reports its steps to ``progress`` unless given one of its own."""
    token = _PROGRESS.set(progress)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


@dataclass
class AlignmentReport:
    level: str                                   # "layer" or "neuron"
    steps: int
    seconds: float
    loss_before: Dict[int, float]                # per compressed layer, on the held-out batches
    loss_after: Dict[int, float]
    changed: List[str] = field(default_factory=list)  # sub-FM state_dict names that were trained
    output_before: Optional[float] = None        # final hidden state's normalised MSE (layer-level only)
    output_after: Optional[float] = None

    @property
    def mean_before(self) -> float:
        return sum(self.loss_before.values()) / max(1, len(self.loss_before))

    @property
    def mean_after(self) -> float:
        return sum(self.loss_after.values()) / max(1, len(self.loss_after))


def _model_inputs(batch: Batch, device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items() if k != "labels"}


def _valid_mask(batch: Batch, hidden: torch.Tensor) -> torch.Tensor:
    mask = batch.get("attention_mask")
    if mask is None:
        return torch.ones(hidden.shape[:-1], dtype=torch.bool, device=hidden.device)
    return mask.to(hidden.device).bool()


def _body(model: nn.Module) -> nn.Module:
    """What runs the layers: a causal LM's decoder without its output projection (a 49,152-way projection at
    every position would cost more than a small decoder's layers and feeds no alignment loss), else the model.
    The decoder builds its causal mask from the attention mask; padding is masked out of the loss."""
    try:
        lm = causal_lm_of(model)
    except TypeError:
        return model
    return lm.get_decoder() if type(lm).__name__.endswith("ForCausalLM") else model


def hidden_states(model: nn.Module, batch: Batch, device) -> Tuple[torch.Tensor, ...]:
    """Outputs of every layer; ``result[l]`` is the output of layer ``l``."""
    out = _body(model)(**_model_inputs(batch, device), output_hidden_states=True)
    return tuple(out.hidden_states[1:])


def layer_losses(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], mask: torch.Tensor,
                 layers: Iterable[int]) -> Dict[int, torch.Tensor]:
    """Teacher-RMS-normalised MSE per layer over valid positions."""
    losses = {}
    for index in layers:
        t, s = teacher[index][mask], student[index][mask]
        assert t.shape == s.shape, f"layer {index}: teacher {tuple(t.shape)} vs student {tuple(s.shape)}"
        losses[index] = (t - s).pow(2).mean() / t.pow(2).mean().clamp_min(1e-12)
    return losses


def output_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Teacher-RMS-normalised MSE of the final hidden state (the last layer's output)."""
    last = len(teacher) - 1
    return layer_losses(teacher, student, mask, [last])[last]


@torch.no_grad()
def evaluate_alignment(teacher: nn.Module, student: nn.Module, batches: Sequence[Batch], layers: Sequence[int],
                       device, precision: str = "fp32") -> Dict[int, float]:
    return _evaluate(teacher, student, batches, layers, device, precision)[0]


@torch.no_grad()
def _evaluate(teacher: nn.Module, student: nn.Module, batches: Sequence[Batch], layers: Sequence[int],
              device, precision: str = "fp32") -> Tuple[Dict[int, float], float]:
    """Mean per-layer losses of ``layers`` and the mean final-hidden-state loss, from one pass per batch."""
    totals = {index: 0.0 for index in layers}
    output = 0.0
    for batch in batches:
        with autocast_for(device, precision):
            t = hidden_states(teacher, batch, device)
            s = hidden_states(student, batch, device)
        t, s = [h.float() for h in t], [h.float() for h in s]
        mask = _valid_mask(batch, t[0])
        for index, loss in layer_losses(t, s, mask, layers).items():
            totals[index] += loss.item()
        output += output_loss(t, s, mask).item()
    count = max(1, len(batches))
    return {index: total / count for index, total in totals.items()}, output / count


def _ffn_parameters(model: nn.Module, layers: Sequence[int]) -> List[Tuple[str, nn.Parameter, Optional[int]]]:
    """(state_dict name, parameter, neuron axis or None) of the compressed layers' FFN + LayerNorm."""
    spec = arch_of(model)
    model_layers = find_layers(model)
    names = {id(p): n for n, p in model.named_parameters()}
    items = []
    for index in layers:
        layer = model_layers[index]
        for path, neuron_axis in ((spec.ffn_in, 0), (spec.ffn_gate, 0), (spec.ffn_out, 1)):
            if path is None:
                continue
            linear = layer_linear(layer, path)
            items.append((names[id(linear.weight)], linear.weight, neuron_axis))
            if linear.bias is not None:
                # b_in/b_gate are per neuron; b_out is per hidden unit and trained whole
                items.append((names[id(linear.bias)], linear.bias, 0 if neuron_axis == 0 else None))
        if spec.ffn_norm:
            for p in layer.get_submodule(spec.ffn_norm).parameters():
                items.append((names[id(p)], p, None))
    return items


def _distil(teacher: nn.Module, student: nn.Module, params: List[nn.Parameter], batches: Iterable[Batch],
            layers: Sequence[int], *, steps: int, lr: float, weight_decay: float, warmup_ratio: float,
            max_grad_norm: float, device, desc: str, after_step=None, progress: Optional[Progress] = None,
            precision: str = "fp32", output_weight: float = 0.0) -> int:
    from transformers import get_linear_schedule_with_warmup

    progress = progress or _PROGRESS.get()
    if progress is not None:
        progress(desc, 0, steps, None)

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * steps), steps)
    stream = itertools.cycle(batches) if isinstance(batches, (list, tuple)) else _repeat(batches)
    scaler = grad_scaler(device, precision)
    done = 0
    with tqdm(total=steps, desc=desc, leave=False, disable=None) as bar:
        for batch in itertools.islice(stream, steps):
            with autocast_for(device, precision):
                with torch.no_grad():
                    target = hidden_states(teacher, batch, device)
                output = hidden_states(student, batch, device)
            # the loss in fp32: autocast leaves the layer outputs in bf16/fp16
            target, output = [h.float() for h in target], [h.float() for h in output]
            losses = layer_losses(target, output, _valid_mask(batch, target[0]), layers)
            loss = torch.stack(list(losses.values())).mean()
            if output_weight > 0:  # the output-level term (fedpft_align_output_weight)
                loss = loss + output_weight * output_loss(target, output, _valid_mask(batch, target[0]))
            optimizer.zero_grad(set_to_none=True)
            backward_step(loss, optimizer, scaler, params, max_grad_norm)
            scheduler.step()
            if after_step is not None:
                after_step()
            done += 1
            value = loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
            if progress is not None:
                progress(desc, done, steps, value)
    return done


def _repeat(loader):
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("the public data loader is empty")


class _OnlyTrain:
    """Freeze every parameter of ``model`` except ``params`` (and restore flags afterwards)."""

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter]):
        self.model, self.params = model, params

    def __enter__(self):
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        self.was_training = self.model.training
        for p, _ in self.flags:
            p.requires_grad_(False)
        for p in self.params:
            p.requires_grad_(True)
        self.model.eval()  # no dropout: distillation targets are deterministic
        return self

    def __exit__(self, *exc):
        for p, flag in self.flags:
            p.requires_grad_(flag)
        self.model.train(self.was_training)


def align_layers_(full_model: nn.Module, sub_model: nn.Module, batches: Iterable[Batch],
                  eval_batches: Sequence[Batch], layers: Sequence[int], *, steps: int, lr: float = 6e-4,
                  weight_decay: float = 0.01, warmup_ratio: float = 0.05, max_grad_norm: float = 1.0,
                  device="cpu", progress: Optional[Progress] = None, precision: str = "fp32",
                  output_weight: float = 0.0) -> AlignmentReport:
    """Layer-level alignment of ``sub_model`` to ``full_model`` in place (teacher frozen); ``progress``
    (default: the one set by :func:`reporting`) is told each step; ``output_weight``: the weight of the
    final hidden state's loss beside the per-layer loss."""
    start = time.perf_counter()
    full_model.eval()
    before, output_before = _evaluate(full_model, sub_model, eval_batches, layers, device, precision)
    items = _ffn_parameters(sub_model, layers)
    params = [p for _, p, _ in items]
    with _OnlyTrain(sub_model, params):
        done = _distil(full_model, sub_model, params, batches, layers, steps=steps, lr=lr,
                       weight_decay=weight_decay, warmup_ratio=warmup_ratio, max_grad_norm=max_grad_norm,
                       device=device, desc="layer-level alignment", progress=progress, precision=precision,
                       output_weight=output_weight)
    after, output_after = _evaluate(full_model, sub_model, eval_batches, layers, device, precision)
    report = AlignmentReport("layer", done, time.perf_counter() - start, before, after, [n for n, _, _ in items],
                             output_before, output_after)
    logger.info("layer-level alignment: %d steps, loss %.4f -> %.4f (%.1fs)",
                done, report.mean_before, report.mean_after, report.seconds)
    return report


def align_neurons_(full_model: nn.Module, sub_model: nn.Module, updated: Mapping[int, torch.Tensor],
                   batches: Iterable[Batch], eval_batches: Sequence[Batch], *, steps: int, lr: float = 6e-4,
                   max_grad_norm: float = 1.0, device="cpu", progress: Optional[Progress] = None,
                   precision: str = "fp32") -> AlignmentReport:
    """Neuron-level alignment in place: only neurons ``updated[l]`` of compressed layer ``l`` change.

    ``full_model`` and ``sub_model`` must already hold the same (aggregated) LoRA + head.
    Returns a report whose ``changed`` lists the sub-FM tensors that now differ.
    """
    start = time.perf_counter()
    layers = sorted(updated)
    full_model.eval()
    before = evaluate_alignment(full_model, sub_model, eval_batches, layers, device, precision)
    items = []
    for index in layers:
        items += [(name, p, axis, index) for name, p, axis in _ffn_parameters(sub_model, [index])]
    # masks: 1 where an entry may change; frozen entries are restored after every step so that
    # AdamW's decoupled weight decay and numerical noise cannot move them
    masks, frozen = [], []
    for _, p, axis, index in items:
        mask = torch.ones_like(p, dtype=torch.bool)
        if axis is not None:
            mask.zero_()
            mask.index_fill_(axis, updated[index].to(p.device), True)
        masks.append(mask)
        frozen.append(p.detach().clone())
    params = [p for _, p, _, _ in items]

    def restore():
        with torch.no_grad():
            for p, m, saved in zip(params, masks, frozen):
                p.copy_(torch.where(m, p, saved))

    with _OnlyTrain(sub_model, params):
        hooks = [p.register_hook(lambda g, m=m: g * m) for p, m in zip(params, masks)]
        try:
            done = _distil(full_model, sub_model, params, batches, layers, steps=steps, lr=lr, weight_decay=0.0,
                           warmup_ratio=0.0, max_grad_norm=max_grad_norm, device=device,
                           desc="neuron-level alignment", after_step=restore, progress=progress,
                           precision=precision)
        finally:
            for hook in hooks:
                hook.remove()
    after = evaluate_alignment(full_model, sub_model, eval_batches, layers, device, precision)
    changed = [name for (name, p, _, _), saved in zip(items, frozen) if not torch.equal(p.detach(), saved)]
    report = AlignmentReport("neuron", done, time.perf_counter() - start, before, after, changed)
    logger.info("neuron-level alignment: %d steps, loss %.4f -> %.4f, %d tensors changed (%.1fs)",
                done, report.mean_before, report.mean_after, len(changed), report.seconds)
    return report
