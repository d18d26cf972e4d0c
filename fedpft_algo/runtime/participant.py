"""One FedML participant (server or client) of a FedPFT run.

    python -m fedpft_algo.participant --cf config.yaml                       # sp, or under mpirun
    python -m fedpft_algo.participant --cf config.yaml --rank R --role ROLE  # cross-silo GRPC

``fedpft run`` starts these processes (see :mod:`fedpft_algo.launch.supervisor`); FedML parses the
command line, reads the yaml and derives rank and role (from MPI, or from the flags).
The server (rank 0) loads the FM, the public data and the test set; a client builds the sub-FM
skeleton from ``config.json`` alone and may not open the FM's weight files at all.
"""
from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Optional, Tuple

import torch

from ..compat import load_fedml
from ..errors import FedPFTError
from ..files import write_json_atomic
from ..rundir.layout import RunDir
from ..rundir.records import RunLog

logger = logging.getLogger("fedpft_algo.participant")


def _encoder(settings, model_config, task):
    from ..models import load_encoder

    return load_encoder(settings.model, model_config, settings.cache_dir)


def task_kind_of(settings, model_config):
    """The run's task kind (:mod:`fedpft_algo.tasks`): ``fedpft_task_kind``, ``auto`` resolved by the model."""
    from ..tasks import resolve_task_kind

    return resolve_task_kind(settings.fedpft.task_kind, model_config)


def build_server(args, settings, task, model_config, device, runlog, run_dir=None, run_config=None):
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
    kind = task_kind_of(settings, model_config)
    test_data = kind.eval_set(encoder, task, config, max(settings.batch_size, 32 if not kind.causal_lm else 8),
                              str(settings.cache_dir / "features"))
    torch.manual_seed(settings.seed)  # the task head's initialisation
    full_model = load_full_model(settings.model, task.num_labels, settings.cache_dir, causal_lm=kind.causal_lm)
    return FedPFTAggregator(full_model, args, settings=settings, public_batches=public_loader, task_kind=kind,
                            eval_batches=eval_batches, test_data=test_data, device=device, runlog=runlog,
                            cache_extra=f"{config.public_dataset or default_public_name(task)}:{len(features)}:{settings.seed}",
                            run_dir=run_dir, run_config=run_config)


def build_client(args, settings, task, model_config, device, runlog):
    from ..core.arch import num_layers
    from ..methods import get_method
    from .trainer import FedPFTTrainer

    config = settings.fedpft
    kind = task_kind_of(settings, model_config)
    # what the method's clients hold (sub-FM, FedOT's emulator, the FM), from config.json alone, with LoRA
    # (+ the task head: classification only; a decoder's output projection stays frozen)
    model = get_method(config.method).client_model(model_config, config, model_class=kind.model_class(model_config))
    return FedPFTTrainer(model, args, settings, compressed_layers=config.compressed_layers(num_layers(model_config)),
                         runlog=runlog, task_kind=kind), model


def build_dataset(settings, task, model_config, *, with_clients: bool, run_dir: Optional[RunDir] = None):
    from ..data.loaders import build_fedml_dataset

    encoder = _encoder(settings, model_config, task)
    kind, cache = task_kind_of(settings, model_config), str(settings.cache_dir / "features")
    encoded = tuple(kind.features(encoder, task, settings.fedpft, split, cache) for split in ("train", "test"))
    data = build_fedml_dataset(task, encoder=encoder, client_num=settings.client_num_in_total,
                               method=settings.partition_method, alpha=settings.partition_alpha,
                               batch_size=settings.batch_size, seed=settings.seed,
                               max_length=settings.fedpft.max_length, cache_dir=cache, encoded=encoded,
                               collator=kind.collator(encoder))
    if run_dir is not None and not run_dir.partition_json.exists():
        write_json_atomic(run_dir.partition_json, data.records)
        run_dir.partition_txt.write_text(data.table() + "\n", encoding="utf-8")
    if not with_clients:
        # the server holds no client data: only sizes (for FedML's bookkeeping) and the test set
        data[2], data[5] = None, {i: None for i in data[5]}
    return data


def role_of(args) -> Tuple[str, int]:
    """``("server", 0)`` or ``("client", rank)``: FedML's rank and role (from MPI, or from the flags)."""
    rank = int(getattr(args, "rank", 0))
    return ("server" if getattr(args, "role", None) == "server" or rank == 0 else "client"), rank


def run(args, run_dir: Optional[RunDir], runlog: RunLog) -> None:
    fedml = load_fedml()
    from fedml import FedMLRunner

    from ..config import read_config
    from ..data.tasks import load_task
    from .hooks import SingleProcessFlow, install_mpi_simulation_hooks
    from ..models import forbid_weight_files, load_model_config, resolve_model_dir
    from ..settings import RunSettings

    role = runlog.role
    single = args.training_type == "simulation" and args.backend == "sp"
    runlog.status("started")
    if role == "server":
        runlog.progress("loading the data and the FM")
    settings = RunSettings.from_args(args)
    device = fedml.device.get_device(args)
    if role == "client" and not single:
        forbid_weight_files(resolve_model_dir(settings.model, settings.cache_dir, verify=False))
    task = load_task(settings.dataset, **settings.task_args())
    model_config = load_model_config(settings.model, task.num_labels, settings.cache_dir, verify=(role == "server"))
    if args.training_type == "simulation" and args.backend == "MPI":
        install_mpi_simulation_hooks(settings.round_offset)
    # what the server's checkpoints record of the run: the config this process was started with
    run_config = read_config(args.yaml_config_file) if role == "server" and run_dir is not None else None

    runlog.status("training", 0)
    if single:
        dataset = build_dataset(settings, task, model_config, with_clients=True, run_dir=run_dir)
        aggregator = build_server(args, settings, task, model_config, device, runlog, run_dir, run_config)
        trainer, model = build_client(args, settings, task, model_config, device, runlog)
        flow = SingleProcessFlow(args, device, dataset, trainer, aggregator, runlog, settings)
        FedMLRunner(args, device, dataset, model, algorithm_flow=flow).run()
    elif role == "server":
        # the server computes only while the clients wait for it: it may use every core
        torch.set_num_threads(max(torch.get_num_threads(), os.cpu_count() or 1))
        dataset = build_dataset(settings, task, model_config, with_clients=False, run_dir=run_dir)
        aggregator = build_server(args, settings, task, model_config, device, runlog, run_dir, run_config)
        # the pre-round hook runs inside the first get_model_params, once FedML's transport is up
        FedMLRunner(args, device, dataset, aggregator.model, server_aggregator=aggregator).run()
    else:
        dataset = build_dataset(settings, task, model_config, with_clients=True, run_dir=run_dir)
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

    Parses FedML's command line and calls ``run_fn(args, run_dir, runlog)`` with the run directory
    the launcher named (:meth:`RunDir.from_env`; None outside a run) and this participant's
    :class:`RunLog`. On any error it records ``failed`` in the participant's status file, prints one
    line ``fedpft <name>: <error>`` and returns 2 for an input error (:class:`FedPFTError`) or 1
    otherwise (with the traceback for the logs).
    """
    logging.basicConfig(level=os.environ.get("FEDPFT_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    fedml = load_fedml()
    args = fedml.init(check_env=False)
    run_dir = RunDir.from_env()
    runlog = RunLog(run_dir, *role_of(args))
    try:
        run_fn(args, run_dir, runlog)
    except BaseException as exc:  # noqa: BLE001 - report, then exit non-zero
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
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
