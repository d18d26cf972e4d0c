"""One FedML participant (server or client) of a FedPFT run.

    python -m fedpft_algo.participant --cf config.yaml                       # sp, or under mpirun
    python -m fedpft_algo.participant --cf config.yaml --rank R --role ROLE  # cross-silo GRPC

``fedpft run`` starts these processes (see :mod:`fedpft_algo.launch.launcher`); FedML parses the
command line, reads the yaml and derives rank and role (from MPI, or from the flags).
The server (rank 0) loads the FM, the public data and the test set; a client builds the sub-FM
skeleton from ``config.json`` alone and may not open the FM's weight files at all.
"""
from __future__ import annotations

import logging
import os
import sys
import traceback

import torch

from ..compat import load_fedml
from ..errors import FedPFTError
from ..rundir.records import RunLog, write_json_atomic

logger = logging.getLogger("fedpft_algo.participant")


def _encoder(settings, model_config, task):
    from ..models import load_tokenizer

    return model_config if task.modality == "image" else load_tokenizer(settings.model, settings.cache_dir)


def build_server(args, settings, task, model_config, device, runlog):
    from .aggregator import FedPFTAggregator
    from ..data.loaders import encode_inputs, make_collator, make_loader
    from ..data.public import default_public_name, load_public
    from ..models import load_full_model

    config = settings.fedpft
    encoder = _encoder(settings, model_config, task)
    collator = make_collator(encoder)
    public = load_public(config.public_dataset, task=task, max_examples=config.public_size, seed=settings.seed)
    features = encode_inputs(encoder, public, config.max_length, str(settings.cache_dir / "features"))
    n_eval = min(len(features) // 5, 4 * config.layer_align_batch_size)
    eval_batches = list(make_loader(features, indices=range(n_eval), collator=collator,
                                    batch_size=config.layer_align_batch_size))
    public_loader = make_loader(features, indices=range(n_eval, len(features)), collator=collator,
                                batch_size=config.layer_align_batch_size, shuffle=True, seed=settings.seed)
    test_x = encode_inputs(encoder, task.test_inputs, config.max_length, str(settings.cache_dir / "features"))
    test_loader = make_loader(test_x, task.test_labels, collator=collator, batch_size=max(settings.batch_size, 32))
    torch.manual_seed(settings.seed)  # the task head's initialisation
    full_model = load_full_model(settings.model, task.num_labels, settings.cache_dir)
    return FedPFTAggregator(full_model, args, settings=settings, public_batches=public_loader,
                            eval_batches=eval_batches, test_data=test_loader, device=device, runlog=runlog,
                            cache_extra=f"{config.public_dataset or default_public_name(task)}:{len(features)}:{settings.seed}")


def build_client(args, settings, task, model_config, device, runlog):
    from ..core.arch import num_layers
    from ..core.compression import build_sub_model_skeleton
    from ..core.lora import add_lora
    from ..models import model_class_for
    from .trainer import FedPFTTrainer

    config = settings.fedpft
    if config.method == "fedot":  # Offsite-Tuning's emulator, LoRA on its adapter layers only
        from ..methods.fedot import build_client_emulator

        model = build_client_emulator(model_config, config, model_class=model_class_for(model_config))
    else:
        skeleton = build_sub_model_skeleton(model_config, config, model_class=model_class_for(model_config))
        model = add_lora(skeleton, config)
    return FedPFTTrainer(model, args, settings, compressed_layers=config.compressed_layers(num_layers(model_config)),
                         runlog=runlog), model


def build_dataset(settings, task, model_config, *, with_clients: bool):
    from ..data.loaders import build_fedml_dataset

    encoder = _encoder(settings, model_config, task)
    data = build_fedml_dataset(task, encoder=encoder, client_num=settings.client_num_in_total,
                               method=settings.partition_method, alpha=settings.partition_alpha,
                               batch_size=settings.batch_size, seed=settings.seed,
                               max_length=settings.fedpft.max_length, cache_dir=str(settings.cache_dir / "features"))
    if settings.run_dir and not (settings.run_dir / "partition.json").exists():
        write_json_atomic(settings.run_dir / "partition.json", data.records)
        (settings.run_dir / "partition.txt").write_text(data.table() + "\n", encoding="utf-8")
    if not with_clients:
        # the server holds no client data: only sizes (for FedML's bookkeeping) and the test set
        data[2], data[5] = None, {i: None for i in data[5]}
    return data


def run(args) -> None:
    fedml = load_fedml()
    from fedml import FedMLRunner

    from ..data.tasks import load_task
    from .hooks import SingleProcessFlow, install_mpi_simulation_hooks
    from ..models import forbid_weight_files, load_model_config, resolve_model_dir
    from .settings import RunSettings

    role = "server" if args.role == "server" or int(getattr(args, "rank", 0)) == 0 else "client"
    single = args.training_type == "simulation" and args.backend == "sp"
    runlog = RunLog(os.environ.get("FEDPFT_RUN_DIR"), role, int(getattr(args, "rank", 0)))
    run.runlog = runlog
    runlog.status("started")
    if role == "server":
        runlog.progress("loading the data and the FM")
    settings = RunSettings.from_args(args)
    device = fedml.device.get_device(args)
    if role == "client" and not single:
        forbid_weight_files(resolve_model_dir(settings.model, settings.cache_dir, verify=False))
    task = load_task(settings.dataset, text_columns=settings.text_columns, label_column=settings.label_column,
                     max_train=settings.max_train_examples, max_test=settings.max_test_examples, seed=settings.seed)
    model_config = load_model_config(settings.model, task.num_labels, settings.cache_dir, verify=(role == "server"))
    if args.training_type == "simulation" and args.backend == "MPI":
        install_mpi_simulation_hooks()

    runlog.status("training", 0)
    if single:
        dataset = build_dataset(settings, task, model_config, with_clients=True)
        aggregator = build_server(args, settings, task, model_config, device, runlog)
        trainer, model = build_client(args, settings, task, model_config, device, runlog)
        flow = SingleProcessFlow(args, device, dataset, trainer, aggregator, runlog)
        FedMLRunner(args, device, dataset, model, algorithm_flow=flow).run()
    elif role == "server":
        # the server computes only while the clients wait for it: it may use every core
        torch.set_num_threads(max(torch.get_num_threads(), os.cpu_count() or 1))
        dataset = build_dataset(settings, task, model_config, with_clients=False)
        aggregator = build_server(args, settings, task, model_config, device, runlog)
        # the pre-round hook runs inside the first get_model_params, once FedML's transport is up
        FedMLRunner(args, device, dataset, aggregator.model, server_aggregator=aggregator).run()
    else:
        dataset = build_dataset(settings, task, model_config, with_clients=True)
        trainer, model = build_client(args, settings, task, model_config, device, runlog)
        FedMLRunner(args, device, dataset, model, client_trainer=trainer).run()
    runlog.status("done")


def _abort_mpi(args) -> None:
    if getattr(args, "backend", None) == "MPI":
        try:
            from mpi4py import MPI

            MPI.COMM_WORLD.Abort(1)  # FedML would wait forever for a dead peer
        except Exception:  # noqa: BLE001 - best effort while failing
            pass


def process_main(run_fn, name: str, on_failure=None) -> int:
    """Entry point of a FedML process started by ``fedpft run`` / ``fedpft bench``.

    Parses FedML's command line, calls ``run_fn(args)``; on any error records ``failed`` in the run's
    status file (``run_fn.runlog``), prints one line ``fedpft <name>: <error>`` and returns 2 for an
    input error (:class:`FedPFTError`) or 1 otherwise (with the traceback for the logs).
    """
    logging.basicConfig(level=os.environ.get("FEDPFT_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    fedml = load_fedml()
    args = fedml.init(check_env=False)
    try:
        run_fn(args)
    except BaseException as exc:  # noqa: BLE001 - report, then exit non-zero
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
        runlog = getattr(run_fn, "runlog", None)
        if runlog is not None:
            runlog.status("failed", error=message)
        if not isinstance(exc, FedPFTError):
            traceback.print_exc()
        print(f"fedpft {name}: {message}", file=sys.stderr, flush=True)
        if on_failure is not None:
            on_failure(args)
        return 2 if isinstance(exc, FedPFTError) else 1
    return 0


def main() -> int:
    return process_main(run, "participant", on_failure=_abort_mpi)


if __name__ == "__main__":
    sys.exit(main())
