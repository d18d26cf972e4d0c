"""Client cost probe: one client's local epoch, timed and memory-measured in a process of its own.

In FedML's ``sp`` mode the server and every client share one process, so neither wall time nor
peak memory there is a client's. The bench therefore starts this module once per (model, kind)
in a fresh process, which builds exactly what that method's client holds, from configuration
alone (random weights: the compute and memory are those of the trained weights). The kind is a
method's ``client_kind`` (:mod:`fedpft_algo.methods`) or one of FedML's baselines:

==============  =====================================================  ==========================
kind            client model                                           trains (optimiser)
==============  =====================================================  ==========================
``sub_model``   FedPFT sub-FM skeleton + LoRA (FedPFT and ablations)   LoRA + head (AdamW)
``emulator``    FedOT emulator skeleton + adapter LoRA                 adapter LoRA + head (AdamW)
``full_lora``   the full FM + LoRA (FedPETuning)                       LoRA + head (AdamW)
``full_model``  the full FM (FedML FedAvg / FedOpt / FedNova)          every parameter (FedML's Adam)
``full_prox``   the full FM with FedProx's proximal term               every parameter (FedML's Adam)
==============  =====================================================  ==========================

It trains one local epoch on ``examples`` real task examples (after one untimed warm-up step),
``repeats`` times, and prints one JSON line: the fastest epoch's seconds (the least disturbed by
other processes on a shared machine; every repeat is listed too), the peak RSS from the moment the data
is loaded to the end of an untimed epoch before them, run with freed buffers returned at once
(:func:`heap_for_memory`; the timed epochs then run at the allocator's usual speed), the RSS before the
model was built (interpreter, torch, data) and right after, parameter counts, the client model's bytes (its first download) and the per-token
FLOPs of its transformer layers (:func:`fedpft_algo.core.compression.flops_per_token`); on a CUDA ``--device`` also the peak device
memory of an epoch (``torch.cuda.max_memory_allocated``, reset per epoch; null on CPU) and, for text,
non-padding tokens per second of the fastest epoch. ``fedpft_precision`` in ``--config-json`` trains
under that autocast (and fp16's gradient scaler), as the trainer does. ``fedml`` is
not imported (a FedML client process carries ~460 MB more, the same for every method).

    python -m fedpft_algo.bench.client_cost --model minilm-l6 --kind sub_model --task rotten_tomatoes
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict

KINDS = ("sub_model", "emulator", "full_lora", "full_model", "full_prox")
# FedML's baselines train the whole FM with FedML's trainer; the other kinds are the methods' own
_BASELINE_KINDS = {"fedavg": "full_model", "fedopt": "full_model", "fednova": "full_model", "fedprox": "full_prox"}
_FULL_MODEL_KINDS = frozenset(_BASELINE_KINDS.values())


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MiB): Linux's ``VmHWM`` (which :func:`reset_peak_rss`
    can restart), else ``ru_maxrss``, as the trainer reports it, without importing fedml."""
    status = _proc_status()
    if "VmHWM" in status:
        return status["VmHWM"] / 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float:
    """Resident memory of this process now (MiB; Linux ``VmRSS``, else the peak so far)."""
    status = _proc_status()
    return status["VmRSS"] / 1024 if "VmRSS" in status else peak_rss_mb()


def reset_peak_rss() -> bool:
    """Restart the peak at the current RSS (Linux >= 4.0: ``5`` to ``/proc/self/clear_refs``), so that
    what loading the data set took (all 60,000 Fashion-MNIST images are decoded before a subset is
    kept) is not counted as the client's training peak. False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# glibc's mallopt(M_MMAP_THRESHOLD): buffers above the threshold get pages of their own, unmapped when freed
_M_MMAP_THRESHOLD = -3
_MEMORY_THRESHOLD = 64 * 1024            # every activation buffer: freed memory leaves the process at once
_TIMING_THRESHOLD = 32 * 1024 * 1024     # glibc's ceiling for its own dynamic threshold (64-bit), where a
                                         # training loop's threshold settles


def heap_for_memory(measure: bool) -> bool:
    """Switch glibc's allocator between measuring memory and running at its usual speed; False where it
    cannot be switched (not glibc): peak RSS then also holds freed buffers the heap kept.

    With glibc's dynamic threshold, freed activation buffers stay on the heap, so a peak RSS measures the
    allocator's history (it grew by ~150 MB over one epoch for every kind), not what a step needs at once;
    ``measure=True`` sets a 64 KiB threshold and returns the heap's free pages (``malloc_trim``); switch it on
    before the model is built: buffers are still served from free heap chunks an earlier step left, which then
    stay resident again (switched on after a few epochs, a SmolLM2-135M client's peak came out 700 MB higher).
    The setting costs a page fault per page of every new buffer (a SmolLM2-135M client epoch took up to 1.8x
    as long), so time with ``measure=False`` afterwards: glibc's 32 MiB ceiling, where its dynamic threshold
    would settle."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return False
    if mallopt(_M_MMAP_THRESHOLD, _MEMORY_THRESHOLD if measure else _TIMING_THRESHOLD) != 1:
        return False
    if measure:
        malloc_trim(0)
    return True


def _proc_status() -> Dict[str, int]:
    """``VmRSS``/``VmHWM`` (kB) from ``/proc/self/status``; empty where there is no such file."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    return {key: int(rest.split()[0]) for key, _, rest in (line.partition(":") for line in lines)
            if key in ("VmRSS", "VmHWM")}


def kind_of(method: str) -> str:
    """Which client model a bench method's clients hold: a FedML baseline's, or the method's ``client_kind``."""
    if method in _BASELINE_KINDS:
        return _BASELINE_KINDS[method]
    from ..methods import get_method

    return get_method(method).client_kind


def _client_model(kind: str, model_config, config, model_class):
    """(model to train, model whose layers count the FLOPs): what the client of ``kind`` holds;
    ``model_class``: the task kind's transformers auto class (a task head, or a decoder's causal LM)."""
    from ..methods import get_method, known_methods

    if kind in _FULL_MODEL_KINDS:  # FedML's baselines: the whole FM, every parameter trained
        model = model_class.from_config(model_config)
        return model, model
    method = next(get_method(name) for name in known_methods() if get_method(name).client_kind == kind)
    client = method.client_model(model_config, config, model_class=model_class)
    return client, client.get_base_model()  # LoRA wraps the skeleton's modules in place


def _optimiser_step(kind: str, client, learning_rate: float, full_learning_rate: float, fedprox_mu: float,
                    device="cpu", precision: str = "fp32", forward=None, loss_fn=None):
    """(trained parameters, one training step on a batch), as the client of ``kind`` trains (on ``device``,
    under ``precision``'s autocast and, for fp16, its gradient scaler, as FedPFTTrainer does); ``forward``:
    what computes the loss (default ``client``; its compiled forward with ``fedpft_compile``); ``loss_fn``:
    the task kind's loss (default ``model(**batch).loss``: decoders compute logits at answer positions only)."""
    forward = forward or client
    import torch

    from ..core.precision import autocast_for, backward_step, grad_scaler

    params = [p for p in client.parameters() if p.requires_grad]
    if kind in _FULL_MODEL_KINDS:  # FedML's classification trainer: Adam(amsgrad) on every parameter
        optimizer = torch.optim.Adam(params, lr=full_learning_rate, amsgrad=True)
    else:  # FedPFTTrainer: AdamW on LoRA + head
        optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    anchor = [p.detach().clone() for p in params] if kind == "full_prox" else None
    scaler = grad_scaler(device, precision)

    def step(batch):
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast_for(device, precision):
            loss = loss_fn(forward, batch) if loss_fn is not None else forward(**batch).loss
        if anchor is not None:  # FedProx: mu/2 ||w - w_global||^2 over every parameter
            loss = loss + sum((fedprox_mu / 2) * (p - a).pow(2).sum() for p, a in zip(params, anchor))
        optimizer.zero_grad(set_to_none=True)
        backward_step(loss, optimizer, scaler)

    return params, step


def probe(model: str, kind: str, task: str, *, examples: int = 64, batch_size: int = 16, max_length: int = 64,
          config_values: Dict = None, learning_rate: float = 8e-4, full_learning_rate: float = 5e-5,
          fedprox_mu: float = 0.01, seed: int = 0, repeats: int = 3, profile: bool = False,
          device: str = "cpu") -> Dict:
    import torch

    from ..core.device_cost import batch_tokens, peak_device_mb, reset_peak, synchronize

    from ..core.compression import count_parameters, flops_per_token
    from ..config import FedPFTConfig
    from ..data.loaders import make_loader
    from ..data.tasks import load_task
    from ..models import load_encoder, load_model_config
    from ..tasks import resolve_task_kind

    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    config = FedPFTConfig.from_dict(dict(config_values or {}, max_length=max_length))
    data = load_task(task, max_train=examples, max_test=1, seed=seed)
    model_config = load_model_config(model, data.num_labels, verify=False)  # a client reads no FM weights
    encoder = load_encoder(model, model_config)
    task_kind = resolve_task_kind(config.task_kind, model_config)   # what the run's clients train on
    features, labels = task_kind.features(encoder, data, config, "train")
    loader = make_loader(features, labels, collator=task_kind.collator(encoder), batch_size=batch_size,
                         shuffle=True, seed=seed)
    # memory first, with freed buffers returned at once: the model's build, the warm-up step and one epoch
    heap_switched = heap_for_memory(True)
    peak_reset = reset_peak_rss()
    base_rss = current_rss_mb() if peak_reset else peak_rss_mb()
    torch.manual_seed(seed)
    client, skeleton = _client_model(kind, model_config, config, task_kind.model_class(model_config))
    if config.gradient_checkpointing and kind not in _FULL_MODEL_KINDS:  # as FedPFTTrainer does (not FedML)
        from ..core.lora import enable_gradient_checkpointing

        enable_gradient_checkpointing(client)
    forward = client
    if kind not in _FULL_MODEL_KINDS:  # the client-cost options, as FedPFTTrainer applies them
        from ..core.client_speed import apply_client_options_

        forward = apply_client_options_(client, config)
    built_rss = current_rss_mb()
    client.to(device).train()
    params, step = _optimiser_step(kind, client, learning_rate, full_learning_rate, fedprox_mu, device,
                                   config.precision, forward, task_kind.loss)
    warm = time.perf_counter()
    step(next(iter(loader)))  # warm-up (allocations, lazy init, compilation); not timed
    warmup_seconds = time.perf_counter() - warm
    for batch in loader:
        step(batch)
    peak_rss = peak_rss_mb()   # before the timed epochs: their heap keeps what it frees, for reuse
    heap_for_memory(False)
    times, peaks = [], []
    tokens = sum(batch_tokens(batch) or 0 for batch in loader)
    for _ in range(max(1, repeats)):
        reset_peak(device)   # each epoch's own peak on the device (CUDA; None elsewhere)
        start = time.perf_counter()
        steps = 0
        for batch in loader:
            step(batch)
            steps += 1
        synchronize(device)
        times.append(time.perf_counter() - start)
        peaks.append(peak_device_mb(device))
    seconds = min(times)
    extra = {"profile_top_ops": _profile(loader, step)} if profile else {}
    return {
        "model": model, "kind": kind, "task": task, "task_kind": task_kind.name, "examples": len(data.train_labels), "steps": steps,
        "batch_size": batch_size, "max_length": max_length, "epoch_seconds": seconds, "epoch_seconds_all": times,
        "warmup_step_seconds": warmup_seconds,
        "peak_rss_mb": peak_rss, "base_rss_mb": base_rss, "built_rss_mb": built_rss,
        "device": str(device), "precision": config.precision,
        "peak_device_mem_mb": None if peaks[0] is None else max(peaks),   # None: not a CUDA device
        "tokens_per_second": tokens / seconds if tokens else None,
        "peak_reset_after_data": peak_reset, "memory_epoch_small_mmap_threshold": heap_switched,
        "total_parameters": count_parameters(client), "trainable_parameters": sum(p.numel() for p in params),
        "client_model_bytes": sum(t.numel() * t.element_size() for t in client.state_dict().values()),
        "flops_per_token": flops_per_token(skeleton, max_length),
        "threads": torch.get_num_threads(), **extra,
    }


def _profile(loader, step, top: int = 15) -> Dict[str, float]:
    """One more epoch under ``torch.profiler``: self CPU seconds of the ``top`` costliest operators
    (where the time goes: the matmuls FedPFT shrinks, or what it leaves as it is)."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for batch in loader:
            step(batch)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    result = {e.key: e.self_cpu_time_total / 1e6 for e in ops[:top]}
    result["(all operators)"] = total / 1e6
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedpft_algo.bench.client_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--task", required=True)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--config-json", default="{}", help="FedPFTConfig fields (unprefixed) as JSON")
    parser.add_argument("--learning-rate", type=float, default=8e-4)
    parser.add_argument("--full-learning-rate", type=float, default=5e-5)
    parser.add_argument("--fedprox-mu", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed; the fastest is reported")
    parser.add_argument("--device", default="cpu", help="where the client trains: cpu, cuda, cuda:1, ...")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one epoch (torch.profiler): self CPU seconds of the costliest operators")
    args = parser.parse_args(argv)
    result = probe(args.model, args.kind, args.task, examples=args.examples, batch_size=args.batch_size,
                   max_length=args.max_length, config_values=json.loads(args.config_json),
                   learning_rate=args.learning_rate, full_learning_rate=args.full_learning_rate,
                   fedprox_mu=args.fedprox_mu, seed=args.seed, repeats=args.repeats, profile=args.profile,
                   device=args.device)
    print(json.dumps(result), flush=True)  # the CLI output of this entry point: one JSON line
    return 0


if __name__ == "__main__":
    sys.exit(main())
