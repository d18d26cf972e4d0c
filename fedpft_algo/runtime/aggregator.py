"""``FedPFTAggregator``: the server side of FedPFT as a FedML ``ServerAggregator``.

FedML's call order on the server (measured for MPI simulation with the hooked aggregator of
:mod:`fedpft_algo.runtime.hooks`, and for cross-silo over MPI and GRPC):

    get_model_params (round 0 payload)                      <- pre-round hook runs here, once
    per round: on_before_aggregation -> aggregate -> on_after_aggregation
               -> set_model_params -> test_all / test

* pre-round hook: build the sub-FM from the FM, align it layer by layer on public data
  (cached), add LoRA to FM and sub-FM; the first payload is the sub-FM's tensors. The config's
  method (:mod:`fedpft_algo.methods`) decides what the proxy is: the sub-FM, FedOT's emulator, the FM.
* ``on_before_aggregation``: split uploads into LoRA/head, activation counts, client scalars.
* ``aggregate``: sample-count-weighted average (pure, :func:`weighted_average`).
* ``on_after_aggregation``: plug the average into the FM (and the sub-FM), evaluate both on the
  held-out test set, every t rounds pool the counts and run neuron-level alignment, and return
  the next payload (aggregate + changed sub-FM tensors + control scalars).
The FM's weights never enter a payload.
"""
from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from safetensors.torch import save_file

from ..rundir import checkpoint
from ..core.aggregation import sum_tensors, weighted_average
from ..core.alignment import align_neurons_, reporting
from ..compat import load_fedml
from ..errors import ConfigError
from ..core.device_cost import device_name
from ..core.gradient_error import GradientProbe
from ..core.lora import add_lora, is_trainable_name, plug_in_, trainable_state
from .payload import METRICS_PREFIX, control, full_state, load_payload_, nbytes, split_prefixed, widths_control
from ..core.privacy import epsilon
from ..methods import get_method
from ..rundir.hf_export import save_adapter
from ..rundir.layout import RunDir
from ..rundir.records import ROUNDS_PHASE, RunLog
from ..settings import RunSettings
from ..tasks import resolve_task_kind
from .seeding import reseed_
from .tracking import RunTracker
from ..core.stats import STATS_PREFIX, activity_scores, select_updated_neurons

ServerAggregator = load_fedml().core.ServerAggregator
logger = logging.getLogger(__name__)


class FedPFTAggregator(ServerAggregator):
    def __init__(self, full_model: torch.nn.Module, args, *, settings: RunSettings, public_batches: Sequence,
                 eval_batches: Sequence, test_data, device="cpu", runlog: Optional[RunLog] = None,
                 cache_extra: str = "", run_dir: Optional[RunDir] = None, run_config: Optional[dict] = None,
                 task_kind=None):
        super().__init__(full_model, args)
        self.settings = settings
        # how the FM is scored every round (fedpft_algo.tasks); test_data is in the form it takes
        self.task_kind = task_kind or resolve_task_kind(settings.fedpft.task_kind, full_model.config)
        self.run_dir = run_dir          # None: no final weights, no checkpoints (a library call)
        self.run_config = run_config    # the run's yaml sections, recorded in every checkpoint
        self.config = settings.fedpft
        self.method = get_method(self.config.method)
        self.public_batches = public_batches
        self.eval_batches = eval_batches
        self.test_data = test_data
        self.device = device
        self.runlog = runlog or RunLog(None, "server", 0)
        self.cache_extra = cache_extra
        self.sub_model: Optional[torch.nn.Module] = None
        self.payload: Optional[OrderedDict] = None
        self.round_idx = settings.round_offset  # rounds done (a resumed run starts after its checkpoint)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.history: List[dict] = []
        self.layer_report = None
        self._pending = {}
        self.tracker = RunTracker.from_args(args, settings, run_dir)  # wandb / TensorBoard (tracking.py)

    # ------------------------------------------------------------------ pre-round hook
    def prepare(self) -> None:
        """Build and layer-align the sub-FM; make the first payload. Runs once, before round 0."""
        start = time.perf_counter()
        self.runlog.event("pre_round", 0)
        self.runlog.progress("building the sub-FM")
        with reporting(self.runlog.progress):   # its distillation steps, for the launcher's progress display
            proxy = self.method.build_proxy(self.model, self.config, self.public_batches, self.eval_batches,
                                            cache_dir=self.settings.cache_dir, cache_extra=self.cache_extra,
                                            device=self.device)
        report = self.layer_report = proxy.report
        torch.manual_seed(self.settings.seed)
        self.sub_model = self.method.add_client_lora(proxy.model, self.config).to(self.device)
        self.model = add_lora(self.model, self.config).to(self.device)
        self._plug_into_full_model(trainable_state(self.sub_model))  # same LoRA init and head on both
        self._prepare_metrics = self._gradient_error("init")
        if self.task_kind.causal_lm and self.settings.resume_checkpoint is None:
            self._prepare_metrics.update(self._zero_shot())
        if self.settings.resume_checkpoint is not None:
            self._restore(self.settings.resume_checkpoint)
        self.payload = full_state(self.sub_model)
        self.payload.update(widths_control(self.sub_model))  # per-layer widths for the clients' skeletons
        self.payload.update(control(self.round_idx, self.config.is_alignment_round(self.round_idx,
                                                                                   self.settings.comm_round)))
        self.prepare_seconds = time.perf_counter() - start
        self.start_clock()
        self.runlog.progress(ROUNDS_PHASE)
        logger.info("pre-round hook: sub-FM ready in %.1fs (%s)", self.prepare_seconds,
                    "cached" if proxy.from_cache else f"aligned: {report.mean_before:.4f} -> {report.mean_after:.4f}"
                    if report else "no layer-level alignment")

    # ------------------------------------------------------------------ FedML contract
    def get_model_params(self):
        if self.payload is None:
            self.prepare()
        self.runlog.event("get_model_params", self.round_idx)
        return OrderedDict((k, v.detach().cpu()) for k, v in self.payload.items())

    def set_model_params(self, model_parameters):
        # FedML hands back what on_after_aggregation returned; the server's models already hold it.
        self.runlog.event("set_model_params", self.round_idx)
        self.payload = model_parameters

    def on_before_aggregation(self, raw_client_model_or_grad_list):
        self.runlog.event("on_before_aggregation", self.round_idx, clients=len(raw_client_model_or_grad_list),
                          kinds=sorted({_kind(name) for _, upload in raw_client_model_or_grad_list for name in upload}))
        params_list, stats, client_metrics, upload_bytes = [], [], [], []
        for sample_count, upload in raw_client_model_or_grad_list:
            rest, scalars = split_prefixed(upload, METRICS_PREFIX)
            params, counts = split_prefixed(rest, STATS_PREFIX)
            upload_bytes.append(nbytes(upload))
            params_list.append((sample_count, params))
            if counts:
                stats.append(OrderedDict((STATS_PREFIX + k, v) for k, v in counts.items()))
            client_metrics.append({k: float(v.item()) for k, v in scalars.items()})
        self._pending = {"stats": stats, "clients": client_metrics, "upload_bytes": upload_bytes}
        return params_list, list(range(len(params_list)))

    def aggregate(self, raw_client_model_or_grad_list):
        self.runlog.event("aggregate", self.round_idx)
        return weighted_average(raw_client_model_or_grad_list, self.config.aggregation)

    def on_after_aggregation(self, aggregated_model_or_grad):
        round_idx = self.round_idx
        self.runlog.event("on_after_aggregation", round_idx)
        self._plug_into_full_model(aggregated_model_or_grad)
        plug_in_(self.sub_model, aggregated_model_or_grad)
        grad = self._pending["grad"] = self._gradient_error("before")
        fm, sub = self._evaluate_both()
        self._write_sample(round_idx, self.model)
        payload = OrderedDict(aggregated_model_or_grad)
        align_seconds, changed = 0.0, []
        if self.config.is_alignment_round(round_idx, self.settings.comm_round):
            changed, align_seconds = self._align_neurons()
            grad.update(self._gradient_error("after"))
            state = self.sub_model.state_dict()
            payload.update((name, state[name].detach().cpu().clone()) for name in changed)
        payload.update(control(round_idx + 1, self.config.is_alignment_round(round_idx + 1, self.settings.comm_round)))
        self._record(round_idx, fm, sub, payload, align_seconds, changed)
        if round_idx + 1 == self.settings.comm_round:
            self.save_final()
        self.round_idx += 1
        self.payload = payload
        interval = self.config.checkpoint_interval
        if interval and (self.round_idx % interval == 0 or self.round_idx == self.settings.comm_round):
            self.save_checkpoint()
        self.runlog.status("training", self.round_idx)
        return payload

    def test(self, test_data, device, args):
        self.runlog.event("test", self.round_idx)
        if self.history:
            last = self.history[-1]
            return {"test_correct": last["test_correct"], "test_total": last["test_total"],
                    "test_loss": last["test_loss"], "accuracy": last["accuracy"]}
        return self.task_kind.evaluate(self.model, test_data, device, self.config.precision)

    def test_all(self, train_data_local_dict, test_data_local_dict, device, args) -> bool:
        # Evaluation already ran in on_after_aggregation, every round, on the plugged-in FM.
        self.runlog.event("test_all", self.round_idx)
        return True

    # ------------------------------------------------------------------ internals
    def _align_neurons(self):
        if not self._pending.get("stats"):
            raise RuntimeError(f"round {self.round_idx}: alignment round but no client uploaded activation counts")
        reseed_(self.settings.round_seed(self.round_idx, "server"), self.public_batches)
        pooled = sum_tensors(self._pending["stats"])
        scores = activity_scores(pooled, self.align_statistic())
        updated = select_updated_neurons(scores, self.config.align_update_ratio, self.generator)
        report = align_neurons_(self.model, self.sub_model, updated, self.public_batches, self.eval_batches,
                                steps=self.config.neuron_align_steps, lr=self.config.neuron_align_lr,
                                max_grad_norm=self.config.align_max_grad_norm, device=self.device,
                                progress=self.runlog.progress, precision=self.config.precision)
        self.runlog.event("neuron_alignment", self.round_idx, changed=len(report.changed),
                          loss_before=report.mean_before, loss_after=report.mean_after)
        return report.changed, report.seconds

    def _record(self, round_idx, fm, sub, payload, align_seconds, changed):
        clients = self._pending.get("clients", [])
        uploads = self._pending.get("upload_bytes", [0])
        now = time.perf_counter()
        row = {
            "round": round_idx,
            "accuracy": fm["accuracy"], "macro_f1": fm["macro_f1"], "loss": fm["loss"],
            "sub_accuracy": sub["accuracy"], "sub_loss": sub["loss"],
            **{f"{k}": fm[k] for k in ("perplexity",) if k in fm},
            **{f"sub_{k}": sub[k] for k in ("perplexity",) if k in sub},
            "train_loss": _mean(c.get("train_loss") for c in clients),
            "client_epoch_seconds": _mean(c.get("epoch_seconds") for c in clients),
            "client_peak_mem_mb": max((c.get("peak_mem_mb", 0.0) for c in clients), default=0.0),
            # on the clients' device: None (an empty cell) where no client trained on a GPU
            "client_peak_device_mem_mb": max((c["peak_device_mem_mb"] for c in clients
                                              if "peak_device_mem_mb" in c), default=None),
            "client_tokens_per_second": _mean(c.get("tokens_per_second") for c in clients),
            "client_update_norm": _mean(c.get("update_norm") for c in clients),  # before clipping (DP runs)
            "upload_bytes": sum(uploads) / max(1, len(uploads)),
            "download_bytes": nbytes(payload),
            "align": bool(changed), "align_seconds": align_seconds, "changed_tensors": len(changed),
            "round_seconds": now - getattr(self, "_last_round_end", getattr(self, "_start_time", now)),
            "dp_epsilon": self._epsilon(round_idx + 1),
            "test_correct": fm["test_correct"], "test_total": fm["test_total"], "test_loss": fm["test_loss"],
            "device": str(self.device),   # the server's; the clients' in upload order
            "client_devices": " ".join(device_name(c["device_code"]) for c in clients if "device_code" in c),
        }
        row.update(self._extra_metrics(round_idx))
        self._last_round_end = now
        self.history.append(row)
        self.runlog.metrics(row)
        self.tracker.log_round(self.history)
        logger.info("round %d: FM acc %.4f, sub-FM acc %.4f, upload %d B/client", round_idx, row["accuracy"],
                    row["sub_accuracy"], row["upload_bytes"])

    def _epsilon(self, rounds: int):
        """Privacy spent by one client after ``rounds`` rounds (None when DP is off)."""
        if self.config.dp_clip_norm <= 0:
            return None
        rate = self.settings.client_num_per_round / self.settings.client_num_in_total
        return epsilon(self.config.dp_noise_multiplier, rate, rounds, self.config.dp_delta)

    def start_clock(self) -> None:
        self._start_time = self._last_round_end = time.perf_counter()

    def save_final(self, path: Optional[Path] = None) -> Optional[Path]:
        """The tuned LoRA + head for the FM, as safetensors (load with :func:`plug_in_`)."""
        path = path or (self.run_dir.final_weights if self.run_dir is not None else None)
        if path is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in trainable_state(self.model).items()}, str(path))
        save_adapter(self.model, path.parent / Path(RunDir.FINAL_ADAPTER).name)  # the same, as a PEFT adapter folder
        return path

    # ------------------------------------------------------------------ checkpoint and resume
    def save_checkpoint(self) -> Optional[Path]:
        """Everything the next round needs (see :mod:`fedpft_algo.rundir.checkpoint`); None without a run dir."""
        if self.run_dir is None:
            return None
        tensors = full_state(self.sub_model)
        tensors.update(("fm." + k, v) for k, v in trainable_state(self.model).items())
        tensors["rng.server_generator"] = self.generator.get_state()
        config = self.run_config
        meta = {"comm_round": self.settings.comm_round, "method": self.config.method, "config": config,
                "config_fingerprint": checkpoint.config_fingerprint(config) if config else None,
                "history": self.history, "pooled_statistics": "none pending: counts are pooled and used in "
                                                               "the round they arrive",
                "client_sampling": "FedML's rule: numpy seeded with the round index"}
        path = checkpoint.save(self.run_dir, self.round_idx, tensors, meta)
        self.runlog.event("checkpoint", self.round_idx, path=str(path))
        return path

    def _restore(self, path: Path) -> None:
        """Continue from a checkpoint: the sub-FM, the FM's LoRA + head, RNG state and metrics so far."""
        saved = checkpoint.read(path)
        if saved.rounds_done != self.round_idx:
            raise ConfigError(f"checkpoint {path} holds {saved.rounds_done} rounds, the run resumes after "
                              f"{self.round_idx}")
        tensors = saved.load_tensors()
        fm = OrderedDict((k[3:], v) for k, v in tensors.items() if k.startswith("fm."))
        load_payload_(self.sub_model, OrderedDict((k, v) for k, v in tensors.items()
                                                  if not k.startswith(("fm.", "rng."))), require_all=True)
        plug_in_(self.model, fm)  # saved under the FM's own names (FedOT's mapping already applied)
        self.generator.set_state(tensors["rng.server_generator"])
        self.history = list(saved.meta["history"])
        self.runlog.event("resume", self.round_idx, path=str(path))
        logger.info("resumed from %s after %d round(s)", path, self.round_idx)

    # ------------------------------------------------------------------ decoders: zero-shot rows, samples
    def align_statistic(self) -> str:
        """``fedpft_align_statistic``, ``auto`` resolved: mean |activation| for decoders (SiLU-gated FFNs
        have almost no exact zeros), APoZ (the paper's) otherwise."""
        statistic = self.config.align_statistic
        return statistic if statistic != "auto" else ("mean_abs" if self.task_kind.causal_lm else "apoz")

    def _evaluate_both(self):
        """Scores of the plugged-in FM and of the proxy. FedPETuning's proxy is the FM itself (the same weights,
        LoRA and head), so it is scored once and its score reported for both."""
        fm = self.task_kind.evaluate(self.model, self.test_data, self.device, self.config.precision)
        if not self.method.uses_proxy:
            return fm, fm
        return fm, self.task_kind.evaluate(self.sub_model, self.test_data, self.device, self.config.precision)

    def _zero_shot(self) -> dict:
        """The FM and the (aligned) proxy scored before any training: the field's zero-shot rows."""
        self.runlog.progress("zero-shot evaluation")
        row = {}
        for prefix, scores in zip(("fm_zero_shot", "proxy_zero_shot"), self._evaluate_both()):
            row.update((f"{prefix}_{k}", scores[k]) for k in ("accuracy", "macro_f1", "loss", "perplexity")
                       if k in scores)
        self._write_sample(-1, self.model, stage="fm_zero_shot")
        self._write_sample(-1, self.sub_model, stage="proxy_zero_shot")
        logger.info("zero-shot: FM %s, proxy %s", row.get("fm_zero_shot_accuracy"), row.get("proxy_zero_shot_accuracy"))
        return row

    def _write_sample(self, round_idx: int, model, stage: str = "plugged_in_fm") -> None:
        """The task kind's greedy answer to its fixed prompt, appended to ``samples.jsonl`` (decoders)."""
        if self.run_dir is None:
            return
        sample = self.task_kind.sample(model, self.test_data, self.device)
        if sample is not None:
            with open(self.run_dir.samples_jsonl, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"round": round_idx, "model": stage, **sample}) + "\n")

    # ------------------------------------------------------------------ the method's plug-in and the gradient error
    def _plug_into_full_model(self, state) -> None:
        self.method.plug_in_(self.model, state, self.sub_model)

    def _gradient_error(self, tag: str) -> dict:
        """Gradient error of the proxy against the FM (same LoRA + head) on a fixed test slice."""
        if not self.method.uses_proxy:
            return {}  # FedPETuning: the clients' model is the FM
        if getattr(self, "_grad_probe", None) is None:
            rename = lambda state: self.method.full_model_names(state, self.sub_model, self.model)  # noqa: E731
            self._grad_probe = GradientProbe(self.task_kind.probe_batch(self.test_data), self.device, rename,
                                             loss_fn=self.task_kind.loss)
        return self._grad_probe.measure(self.model, self.sub_model, tag)

    def _extra_metrics(self, round_idx: int) -> dict:
        extra = dict(self._pending.get("grad", {}))
        if round_idx == 0:  # the pre-round hook's cost and the gradient error it left
            extra.update(getattr(self, "_prepare_metrics", {}))
            extra["prepare_seconds"] = getattr(self, "prepare_seconds", float("nan"))
            extra["layer_align_seconds"] = self.layer_report.seconds if self.layer_report else 0.0
        return extra


def _kind(name: str) -> str:
    """What an uploaded tensor is: LoRA/head, activation counts, training scalars, or other."""
    if name.startswith(STATS_PREFIX):
        return "stats"
    if name.startswith(METRICS_PREFIX):
        return "metrics"
    return "lora" if is_trainable_name(name) else "other"


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")
