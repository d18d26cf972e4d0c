"""The ``fedpft`` command line.

FedML 0.9.6's ``fedml run`` only talks to FedML's hosted platform; ``fedpft run`` is the local
equivalent::

    fedpft run --cf fedml_config/simulation_mpi.yaml [--set comm_round=3 epochs=2 ...] [--out DIR]
               [--timeout 3600] [--round-timeout 900]
    fedpft run --resume RUN_DIR         # continue a stopped run from its last checkpoint
    fedpft run --check ...              # resolve, validate and pre-flight; start and write nothing

Each subcommand is one ``_cmd_<name>(args)`` function registered in :data:`COMMANDS` together with
a function that adds its arguments. Input mistakes (:class:`FedPFTError`) print
``fedpft: error: <message>`` and exit 2; a run that starts but fails prints
``fedpft: run failed: <message>`` and exits 1. The console carries only the tool's own lines unless
``-v`` (see :mod:`fedpft_algo.launch.console`).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

from .bench import runner as bench, vit_pretrain as vision
from .errors import ConfigError, FedPFTError

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE = 0, 1, 2


# ---------------------------------------------------------------------- fedpft run
def _add_run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cf", metavar="FILE", help="FedML yaml config (see fedml_config/)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint "
                        "(same config and seed: the metrics match an uninterrupted run)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override config keys by their FedML (flattened) names, values parsed as YAML: "
                             "--set A=1 B=2, or --set A=1 --set B=2; SECTION.KEY=VALUE adds a key. Relative "
                             "paths are taken from the current directory (those inside the yaml from the "
                             "yaml's directory)")
    parser.add_argument("--out", metavar="DIR", help="run directory, new or empty "
                        "(default: runs/<config name>-<YYYYmmdd-HHMMSS>)")
    parser.add_argument("--hostfile", metavar="FILE", help="MPI across hosts: Open MPI's hostfile ('HOST slots=N' "
                        "per line) for mpirun; ranks fill the hosts' slots in order, rank 0 (the server) on the "
                        "first host (same as comm_args.mpi_hostfile in the yaml)")
    parser.add_argument("--check", action="store_true", help="resolve, validate and pre-flight the run (with "
                        "--resume: its checkpoint), print what would start, and exit; starts and writes nothing")
    parser.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                        help="stop the run after S seconds in total (default: %(default)g)")
    parser.add_argument("--round-timeout", type=float, default=900.0, metavar="S",
                        help="stop the run when no round finishes for S seconds after the first started; "
                             "also bounds the wait for the GRPC server to listen (default: %(default)g)")


def _cmd_run(args: argparse.Namespace) -> int:
    from . import launch
    from .launch import console
    from .rundir import results
    from .rundir.layout import RunDir

    for name in ("timeout", "round_timeout"):
        if not getattr(args, name) > 0:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name):g}: expected a number of seconds > 0")
    if args.resume:
        if args.cf or args.overrides or args.out or args.hostfile:
            raise ConfigError("--resume RUN_DIR takes the run's own config: drop --cf, --set, --out and --hostfile")
        plan = launch.plan_resume(args.resume)
        run_dir = Path(args.resume).expanduser().resolve()
    elif not args.cf:
        raise ConfigError("fedpft run needs --cf FILE (a FedML yaml) or --resume RUN_DIR")
    else:
        # every input check happens before the run dir exists
        plan = launch.plan_run(args.cf, args.overrides, hostfile=args.hostfile)
        run_dir = _new_run_dir(args.out, plan.config_file)
    if args.check:
        return _check_only(plan, run_dir)
    created = False
    if not args.resume:
        _preflight(plan)
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
    console.keep_log(run_dir)   # the launcher's messages, and what was held so far, in logs/launcher.log
    try:
        rounds = launch.launch(plan, run_dir, expect=[RunDir.FINAL_WEIGHTS], timeout=args.timeout,
                               round_timeout=args.round_timeout)
    except launch.RunFailed as exc:
        return _run_failed(exc, run_dir, created)
    except FedPFTError:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    written = [p.name for p in results.write_results(run_dir, rounds) if p is not None]
    last = rounds[-1]
    print(f"fedpft: finished {len(rounds)} round(s): accuracy {_number(last.get('accuracy'))}, "
          f"sub-model accuracy {_number(last.get('sub_accuracy'))}; wrote {', '.join(written)} in:")
    print(run_dir)
    return EXIT_OK


def _check_only(plan, run_dir: Path) -> int:
    """``fedpft run --check``: pre-flight ``plan`` and print what would start; nothing starts or is written."""
    from .launch import limits

    found = _preflight(plan)
    print(f"fedpft: check passed for {plan.config_file}: nothing was started or written")
    rows = limits.summary_rows(plan, found)
    rows["run dir"] = f"{run_dir}" + (" (resumed)" if plan.resume_round else " (created when the run starts)")
    if plan.mpirun:
        from .launch import processes
        from .rundir.layout import RunDir

        layout = RunDir(run_dir)
        config = layout.resume_config if plan.resume_round else layout.config
        rows["mpirun"] = " ".join(plan.mpirun_command(processes.participant_env(layout, plan.num_clients)) + [
            sys.executable, "-m", processes.PARTICIPANT_MODULE, "--cf", str(config)])
    for name, text in rows.items():
        print(f"  {name:<9} {text}")
    return EXIT_OK


def _preflight(plan):
    from . import launch
    from .launch import console

    console.route_transformers()   # pre-flight loads the model config with transformers
    return launch.preflight(plan)


def _run_failed(exc: Exception, run_dir: Path, created: bool) -> int:
    """A run that started and failed: an input error found by a participant (exit 2), or exit 1."""
    from .rundir.layout import RunDir

    input_error = _input_error(run_dir)
    if input_error:  # bad data or model found by a participant: an input error, not a failed run
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise FedPFTError(input_error) from None
    print(f"fedpft: run failed: {exc}", file=sys.stderr)
    print(f"fedpft: logs are in {RunDir(run_dir).logs}", file=sys.stderr)
    from .rundir.checkpoint import latest

    saved = latest(run_dir)
    if saved is not None:
        print(f"fedpft: {saved.rounds_done} round(s) are checkpointed; continue with: fedpft run --resume "
              f"{run_dir}", file=sys.stderr)
    return EXIT_RUN_FAILED


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


_INPUT_ERRORS = ("FedPFTError: ", "ConfigError: ", "DataError: ", "ModelError: ")


def _input_error(run_dir: Path) -> Optional[str]:
    """The one-line message of a participant that failed on user input (data, model, config)."""
    from .rundir.records import read_statuses

    for status in read_statuses(run_dir).values():
        error = status.get("error") or ""
        if status.get("phase") == "failed" and error.startswith(_INPUT_ERRORS):
            return error.split(": ", 1)[1]
    return None


def _new_run_dir(out: Optional[str], config_file: Path) -> Path:
    """Where the run directory goes (created once pre-flight passed); refuses a non-empty existing ``--out``."""
    if out:
        run_dir = Path(out).expanduser().resolve()
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise ConfigError(f"--out {out}: the directory exists and is not empty; choose a new one")
        return run_dir
    stem = Path("runs") / f"{config_file.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, n = stem.resolve(), 1
    while run_dir.exists():
        n += 1
        run_dir = Path(f"{stem}-{n}").resolve()
    return run_dir


# ---------------------------------------------------------------------- fedpft compress
def _add_compress_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="minilm-l6", help="FM: minilm-l6, mpnet-base, a model dir or hub id")
    parser.add_argument("--dataset", default="rotten_tomatoes", help="task whose default public set is used")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="fedpft_KEY=VALUE",
                        dest="overrides", help="FedPFT settings, e.g. --set fedpft_layer_align_steps=300 "
                                               "fedpft_ffn_keep_ratio=0.5 (or repeat --set)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data sample, shuffling and head (default 0)")
    parser.add_argument("--out", metavar="DIR", help="also write DIR/compress_report.json")


def _cmd_compress(args: argparse.Namespace) -> int:
    from .config import FedPFTConfig
    from .launch import parse_override
    from .bench.compress import compress_report, format_report

    values = dict(parse_override(item) for item in args.overrides)
    config = FedPFTConfig.from_dict(values, prefix="fedpft_")
    result = compress_report(args.model, dataset=args.dataset, config=config, seed=args.seed,
                             out=Path(args.out) if args.out else None)
    print(format_report(result))
    return EXIT_OK


# ---------------------------------------------------------------------- fedpft predict
def _add_predict_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a finished fedpft run directory")
    parser.add_argument("texts", nargs="*", help="texts to classify (or, for a decoder run, to answer) with the FM + "
                        "tuned LoRA/head")
    parser.add_argument("--text", action="append", default=[], dest="more_texts", metavar="TEXT",
                        help="one more text (repeatable); a decoder run prints the greedy answer of the FM with "
                             "the tuned LoRA, and for an instruction task also the label the multiple-choice "
                             "rule picks")


def _cmd_predict(args: argparse.Namespace) -> int:
    from .inference import answer, load_tuned_model, predict, prompting
    from .launch import console

    texts = list(args.texts) + list(args.more_texts)
    if not texts:
        raise ConfigError("fedpft predict needs at least one text (positional or --text TEXT)")
    how = prompting(args.run_dir)   # checks the run directory before the FM is loaded
    console.route_transformers()   # its load report (the task head is new) and weight bar: -v shows them
    model, tokenizer, label_names = load_tuned_model(args.run_dir)
    if how.kind == "classification":
        for text, label in zip(texts, predict(model, tokenizer, texts)):
            name = label_names[label] if label < len(label_names) else str(label)
            print(f"{name}\t{text}")
        return EXIT_OK
    for text, row in zip(texts, answer(model, tokenizer, texts, how)):   # a decoder: [label,] greedy answer, text
        said = " ".join(row["answer"].split())
        print("\t".join(([row["label"]] if "label" in row else []) + [said, text]))
    return EXIT_OK


# ---------------------------------------------------------------------- fedpft export
def _add_export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a finished fedpft run directory (text model)")
    parser.add_argument("--merged", metavar="OUT", required=True,
                        help="write the FM with the LoRA merged in, its tokenizer and label names to the new "
                             "folder OUT (loads with AutoModelForSequenceClassification and pipeline)")


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_merged

    print(export_merged(args.run_dir, args.merged))
    return EXIT_OK


# ---------------------------------------------------------------------- the table of subcommands
# name -> (help, add_arguments, command).
COMMANDS: Dict[str, Tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "run": ("run a FedML job locally (simulation sp/MPI, cross-silo MPI/GRPC)", _add_run_args, _cmd_run),
    "compress": ("build and layer-align a sub-FM; report sizes, FLOPs and distillation loss",
                 _add_compress_args, _cmd_compress),
    "bench": ("benchmark FedPFT against its ablations, FedPETuning, FedOT and FedML's FedAvg/FedProx",
              bench.add_arguments, bench.run),
    "pretrain-vit": (vision.HELP, vision.add_arguments, vision.run),
    "predict": ("classify texts (decoders: answer prompts) with the FM + the LoRA/head of a finished run",
                _add_predict_args, _cmd_predict),
    "export": ("write a finished run's tuned FM as a standalone Hugging Face model folder (LoRA merged)",
               _add_export_args, _cmd_export),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedpft", description="FedPFT (Federated Proxy Fine-Tuning) for FedML")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the launcher's log messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_arguments, command) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub_parser)
        sub_parser.set_defaults(handler=command)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .launch.console import command_console

    args = build_parser().parse_args(argv)
    with command_console(args.verbose):   # library warnings and messages: in the run's log, on the console with -v
        try:
            return args.handler(args)
        except FedPFTError as exc:
            print(f"fedpft: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:   # before anything started (a run stops its processes itself)
            print("fedpft: interrupted", file=sys.stderr)
            return EXIT_RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())
