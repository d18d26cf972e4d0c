"""FedML's own baselines on the same FM and data: full-model FedAvg, FedProx, FedOpt, FedNova.

These run **FedML's code, unchanged**: ``FedMLRunner`` with backend ``sp`` and no custom trainer
or aggregator starts FedML's ``SimulatorSingleProcess``, which trains with FedML's classification
trainer (cross-entropy on ``(x, y)`` batches, FedML's optimiser choice) and averages with FedML's
own rule. This module only adapts the model and the data to what that trainer expects:

* :class:`FedMLClassifier`: an ``nn.Module`` around the Hugging Face FM whose ``forward(x)``
  returns logits; ``x`` is the padded ``input_ids`` (the attention mask is ``x != pad id``), or
  ``pixel_values`` for an image FM;
* :class:`TupleLoader`: the plugin's dict-batch loaders as ``(x, y)`` loaders.

Every parameter of the FM is trained and uploaded ("full-model FedAvg"): upload and download per
client per round are the whole model's tensors. FedML tests the global model every round on
the task's test set (only client 0 carries the test loader, so FedML evaluates it once per round);
its result, which FedML only logs, is read from its log record and written as one row of
``metrics.jsonl`` per round, like the FedPFT server writes. After the last round the final model
is evaluated once more with :func:`fedpft_algo.core.evaluate.evaluate` for macro-F1.

    python -m fedpft_algo.runtime.baselines --cf config.yaml     # config: backend sp, federated_optimizer FedProx, ...
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Optional

import torch
from torch import nn

from ..compat import load_fedml
from ..errors import ConfigError
from ..methods import FEDML_BASELINES as BASELINES  # bench method name -> FedML's federated_optimizer

logger = logging.getLogger("fedpft_algo.runtime.baselines")

# Keys FedML 0.9.6's sp simulators read for these optimisers (missing ones are AttributeErrors deep
# inside FedML). Defaults: FedML's example values; FedOpt's server step 1.0 with SGD is FedAvg.
FEDML_SP_DEFAULTS = {
    "fedprox_mu": 0.01, "server_optimizer": "sgd", "server_lr": 1.0, "server_momentum": 0.0, "feddyn_alpha": 0.01,
    "gmf": 0.0, "mu": 0.0, "momentum": 0.0, "mimelite": False, "ci": 0, "dampening": 0.0, "nesterov": False,
    "initialize_all_clients": False, "wd": 0.0, "lr_schedule": "None", "lr_decay_rate": 0.1, "lr_step_size": 1,
    "lr_milestones": [], "frequency_of_the_test": 1,
}


class FedMLClassifier(nn.Module):
    """A Hugging Face classifier as FedML's trainer wants it: ``forward(x) -> logits``."""

    def __init__(self, model: nn.Module, pad_token_id: Optional[int] = None, input_name: str = "input_ids"):
        super().__init__()
        self.model, self.pad_token_id, self.input_name = model, pad_token_id, input_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_name == "pixel_values":
            return self.model(pixel_values=x).logits
        mask = (x != self.pad_token_id).long() if self.pad_token_id is not None else torch.ones_like(x)
        return self.model(input_ids=x, attention_mask=mask).logits


class TupleLoader:
    """A dict-batch loader seen as FedML's ``(x, y)`` loader (``x`` = ``input_name``, ``y`` = labels)."""

    def __init__(self, loader, input_name: str = "input_ids"):
        self.loader, self.input_name = loader, input_name
        self.dataset = loader.dataset

    def __iter__(self):
        for batch in self.loader:
            yield batch[self.input_name], batch["labels"]

    def __len__(self) -> int:
        return len(self.loader)


def fedml_dataset(data, input_name: str = "input_ids") -> list:
    """FedML's 8-item list with ``(x, y)`` loaders; only client 0 holds the test loader (one test per round)."""
    train_num, test_num, train_global, test_global, train_num_dict, train_local, _, class_num = data
    wrap = lambda loader: TupleLoader(loader, input_name)  # noqa: E731
    test = wrap(test_global)
    return [train_num, test_num, wrap(train_global), test, dict(train_num_dict),
            {i: wrap(loader) for i, loader in train_local.items()},
            {i: (test if i == 0 else None) for i in train_local}, class_num]


class FedMLTestCapture(logging.Handler):
    """Reads FedML's per-round test result from its log: FedML logs the dict ``{"test_acc", "test_loss"}``."""

    def __init__(self, on_test: Callable[[int, dict], None]):
        super().__init__(level=logging.INFO)
        self.on_test, self.rounds, self.train = on_test, 0, {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.msg
        if not isinstance(message, dict):
            return
        if "training_acc" in message:
            self.train = dict(message)
        elif "test_acc" in message:
            # with frequency_of_the_test = 1 FedML tests after every round, in order
            self.on_test(self.rounds, {**message, **self.train})
            self.rounds += 1


def model_bytes(model: nn.Module) -> int:
    """What full-model FedAvg moves per client and direction: every tensor of the state dict."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def apply_fedml_defaults(args, method: Optional[str] = None) -> None:
    """Set FedML's sp-baseline keys the yaml lacks; ``method`` (a :data:`BASELINES` name) sets the optimiser."""
    if method is not None:
        if method not in BASELINES:
            raise ConfigError(f"baseline {method!r} is not allowed: expected one of {', '.join(BASELINES)}")
        args.federated_optimizer = BASELINES[method]
    if args.federated_optimizer not in BASELINES.values():
        raise ConfigError(f"federated_optimizer={args.federated_optimizer!r} is not allowed for a FedML baseline: "
                          f"expected one of {', '.join(BASELINES.values())}")
    for key, value in FEDML_SP_DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def _build_model_and_data(settings):
    """The task, the FM with its task head, FedML's dataset list and the FM as FedML's classifier."""
    from ..data.loaders import build_fedml_dataset
    from ..data.tasks import load_task
    from ..models import load_encoder, load_full_model

    task = load_task(settings.dataset, **settings.task_args())
    image = task.modality == "image"
    torch.manual_seed(settings.seed)  # the task head's initialisation, as the FedPFT server does
    hf_model = load_full_model(settings.model, task.num_labels, settings.cache_dir)
    encoder = load_encoder(settings.model, hf_model.config, settings.cache_dir)
    data = build_fedml_dataset(task, encoder=encoder, client_num=settings.client_num_in_total,
                               method=settings.partition_method, alpha=settings.partition_alpha,
                               batch_size=settings.batch_size, seed=settings.seed,
                               max_length=settings.fedpft.max_length, cache_dir=str(settings.cache_dir / "features"))
    input_name = "pixel_values" if image else "input_ids"
    model = FedMLClassifier(hf_model, None if image else encoder.pad_token_id, input_name)
    return hf_model, data, model, input_name


def _run_fedml(args, device, data, input_name: str, model, on_test: Callable[[int, dict], None], runlog) -> None:
    """FedML's sp simulator, unchanged, with its per-round test results read from its log (``on_test``)."""
    from fedml import FedMLRunner

    capture = FedMLTestCapture(on_test)
    root = logging.getLogger()
    root.addHandler(capture)
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        runlog.status("training", 0)
        FedMLRunner(args, device, fedml_dataset(data, input_name), model).run()
    finally:
        root.removeHandler(capture)


def run(args, run_dir, runlog) -> None:
    """One baseline run in FedML's sp simulator (``run_dir``, ``runlog``: see :func:`participant.process_main`)."""
    fedml = load_fedml()

    from ..core.evaluate import evaluate
    from ..settings import RunSettings

    if not (args.training_type == "simulation" and args.backend == "sp"):
        raise ConfigError("FedML baselines run in FedML's single-process simulator: "
                          "set training_type simulation and backend sp")
    apply_fedml_defaults(args)
    runlog.status("started")
    settings = RunSettings.from_args(args)
    device = fedml.device.get_device(args)
    hf_model, data, model, input_name = _build_model_and_data(settings)
    size = model_bytes(model)
    last = {"time": time.perf_counter()}
    held = []

    def on_test(round_idx: int, result: dict) -> None:
        now = time.perf_counter()
        row = {"round": round_idx, "accuracy": float(result["test_acc"]), "loss": float(result["test_loss"]),
               "train_accuracy": result.get("training_acc"), "train_loss": result.get("training_loss"),
               "upload_bytes": size, "download_bytes": size, "round_seconds": now - last["time"],
               "federated_optimizer": args.federated_optimizer}
        last["time"] = now
        if round_idx + 1 == settings.comm_round:
            held.append(row)  # completed with macro-F1 after the run
        else:
            runlog.metrics(row)
        runlog.status("training", round_idx + 1)

    _run_fedml(args, device, data, input_name, model, on_test, runlog)
    if not held:
        raise RuntimeError(f"FedML's {args.federated_optimizer} finished without a test result for the last round")
    final = evaluate(hf_model, data[3], device)  # the global model FedML left in `model`
    row = held[0]
    row.update(macro_f1=final["macro_f1"], accuracy_evaluate=final["accuracy"])
    runlog.metrics(row)
    runlog.status("done")


def main() -> int:
    from .participant import process_main

    return process_main(run, "baseline")


if __name__ == "__main__":
    sys.exit(main())
