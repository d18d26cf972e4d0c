"""``fedpft bench``: FedPFT against its ablations, the paper's baselines and FedML's own, side by side.

    fedpft bench --cf fedml_config/bench.yaml [--out DIR] [--smoke] [--methods a,b] [--tasks x,y]
                 [--partitions homo,hetero:1] [--threads N] [--jobs N] [--report-only]

The bench yaml is a FedML config (the base of every run) plus a ``bench:`` section::

    bench:
      methods: [fedpft, fedpft_n, fedpft_b, fedpft_d, fedpetuning, fedot, fedavg, fedprox]
      tasks: [rotten_tomatoes, trec6, reuters_r8, election_tweets]  # uninstalled ones are skipped
      partitions: [homo, "hetero:1.0"]     # IID, Dirichlet(alpha); "hetero" = data_args' alpha
      seeds: [0]
      cell_timeout: 1800                   # seconds per cell
      probe_examples: 64                   # client-cost probe: one local epoch on this many examples
      threads: null                        # OMP_NUM_THREADS of every cell and probe (null: torch's default)
      jobs: 1                              # cells side by side (threads default to cores // jobs; probes alone)
      baseline_args: {client_optimizer: adam, learning_rate: 5.0e-5, fedprox_mu: 0.01,
                      fednova: {learning_rate: 0.05}}       # {method: {...}}: for that baseline only
      vision: {model: null, task: fashion_mnist, methods: [...], set: {...}}   # a vision cell if model is set
      smoke: {methods: [...], set: {comm_round: 2, ...}}                        # what --smoke changes
      variants: {fedpft_t5: {method: fedpft, set: {fedpft_align_interval: 5}}}  # a method with other settings

Methods are the FedPFT family (:data:`fedpft_algo.config.METHODS`, run by
``python -m fedpft_algo.participant``) and FedML's baselines (:data:`fedpft_algo.methods.FEDML_BASELINES`,
run by ``python -m fedpft_algo.runtime.baselines`` in FedML's own sp simulator). Every cell (method x task
x partition x seed) is one such subprocess in FedML's ``sp`` mode, started and watched by the
launcher with a per-cell timeout. A finished cell is recorded in ``results.json`` with a hash of
its config and is not run again (resume by re-running the same command); a changed config reruns
it. Client cost is measured by :mod:`fedpft_algo.bench.client_cost` probes in processes of their own,
once per (model, client kind). The report (``results.csv``, ``results.md``, PNG plots) is in
:mod:`fedpft_algo.bench.report`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

from ..methods import FEDML_BASELINES as BASELINES
# re-exported: the bench's public names live in bench_spec
from .probes import PROBES_JSON, plan_probes, probe_key, run_probes
from .spec import BenchSpec, Cell, cell_config, config_hash, load_spec, plan_cells
from ..config import FedPFTConfig
from ..errors import ConfigError
from ..rundir.layout import RunDir

logger = logging.getLogger(__name__)

RESULTS_JSON, FAILURES_JSON = "results.json", "failures.json"


def run_cell(spec: BenchSpec, cell: Cell, out: Path, stop: Optional[threading.Event] = None) -> Dict[str, Any]:
    """Run one cell as its own sp subprocess; returns its record (raises :class:`fedpft_algo.launch.RunFailed`).

    ``stop`` (set from another thread) ends the cell as Ctrl-C would."""
    from ..launch import launch, plan_config, plan_run

    config = cell_config(spec, cell, out / "cache")
    run_dir = out / "cells" / cell.id
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a partial earlier attempt
    run_dir.mkdir(parents=True)
    if spec.base_method(cell.method) in BASELINES:  # FedML's own optimiser, no LoRA + head to save
        plan = plan_config(config, spec.path, optimizers=tuple(BASELINES.values()))
        module, expect = "fedpft_algo.runtime.baselines", []
    else:
        path = out / "configs" / f"{cell.id}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        plan = plan_run(path)
        module, expect = None, [RunDir.FINAL_WEIGHTS]   # None: the FedPFT participant
    if plan.backend != "sp" or plan.training_type != "simulation":
        raise ConfigError("bench cells run in FedML's single-process simulation: set training_type simulation, "
                          "backend sp in the bench yaml")
    start = time.monotonic()
    rounds = launch(plan, run_dir, expect=expect, timeout=spec.cell_timeout, round_timeout=spec.cell_timeout,
                    participant_module=module, progress=False, stop=stop)
    wall = time.monotonic() - start
    from .report import cell_record

    record = cell_record(cell, rounds, wall)
    record["base_method"] = spec.base_method(cell.method)
    record["config_hash"] = config_hash(config)
    return record


def _producers_first(spec: BenchSpec, cells):
    """Cells whose runs fill the shared cache (the layer-aligned sub-FM, FedOT's distilled emulator)
    first, one of each, so that cells side by side load the cache entry instead of waiting for it."""
    from ..methods import get_method

    first = {}
    for cell in cells:
        method = spec.base_method(cell.method)
        if method not in BASELINES and FedPFTConfig(method=method).layer_alignment:
            first.setdefault((cell.model, get_method(method).client_kind), cell)  # one per kind of proxy
    lead = list(first.values())
    return lead + [c for c in cells if c not in lead]


def _run_cells(spec: BenchSpec, cells, out: Path, records, failures, bar) -> None:
    """Run ``cells``, ``spec.jobs`` at a time, recording each as it finishes (in this thread)."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from ..files import write_json_atomic
    from ..launch import RunFailed

    stop = threading.Event()
    pending = list(cells)
    running = {}
    with ThreadPoolExecutor(max_workers=spec.jobs, thread_name_prefix="bench-cell") as pool:
        try:
            while pending or running:
                while pending and len(running) < spec.jobs:
                    cell = pending.pop(0)
                    running[pool.submit(run_cell, spec, cell, out, stop)] = cell
                bar.set_postfix_str(", ".join(c.id for c in running.values()))
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    cell = running.pop(future)
                    try:
                        records[cell.id] = future.result()
                        write_json_atomic(out / RESULTS_JSON, list(records.values()))
                    except RunFailed as exc:
                        failures[cell.id] = f"RunFailed: {exc}"
                        logger.warning("cell %s failed: %s", cell.id, exc)
                    except Exception as exc:  # noqa: BLE001 - one failed cell must not stop the matrix
                        failures[cell.id] = f"{type(exc).__name__}: {exc}"
                        logger.warning("cell %s failed: %s", cell.id, exc)
                    bar.update(1)
        except KeyboardInterrupt:  # Ctrl-C / SIGTERM: stop the running cells' processes, then the bench
            stop.set()
            wait(running)
            raise


class _env:
    def __init__(self, values):
        self.values, self.saved = values, {}

    def __enter__(self):
        for key, value in self.values.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value

    def __exit__(self, *exc):
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---------------------------------------------------------------------- the bench
def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return default


def _write_suite_report(spec: BenchSpec, out: Path, records, probes, notes, failures) -> Dict[str, str]:
    """Write the report of every finished cell of the suite; returns its paths."""
    from .report import write_report

    # results.json keeps every cell finished in `out` (a later call with other seeds or methods must not
    # lose them); the tables and plots cover every finished cell of the whole suite the yaml names, also
    # when this call ran a part of it or cannot run some of it here (a task not installed, no vision model)
    suite = plan_cells(dataclasses.replace(spec, seeds=spec.report_seeds or spec.seeds), runnable_only=False)[0]
    suite_ids = {c.id for c in suite}
    for cell in suite:
        if cell.id in records:
            records[cell.id]["probe"] = probe_key(spec, cell)
    return write_report(out, list(records.values()), probes,
                        notes=notes + [f"failed: {k}: {v}" for k, v in failures.items()],
                        shown=lambda r: r["cell"] in suite_ids)


def _finished(record, config) -> bool:
    """Whether ``record`` is a finished run of ``config`` (hashes recorded before the cache directory was left
    out of them count too)."""
    return bool(record) and record.get("config_hash") in (config_hash(config),
                                                          config_hash(config, with_cache_dir=True))


def run_bench(spec: BenchSpec, out: Path, *, methods=None, tasks=None, partitions=None, progress: bool = True,
              execute: bool = True) -> Dict[str, Any]:
    """Run every unfinished cell and probe (none with ``execute=False``), then write the report.

    Returns a summary dict: cells planned, run, finished, failures, notes, report paths.
    """
    from tqdm.auto import tqdm

    from ..launch import raise_on_sigterm
    from ..files import write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    cells, notes = plan_cells(spec, methods, tasks, partitions)
    if not cells:
        raise ConfigError("bench: no cell to run (" + ("; ".join(notes) or "empty matrix") + ")")
    records = {r["cell"]: r for r in _read_json(out / RESULTS_JSON, []) if isinstance(r, dict) and "cell" in r}
    probes = _read_json(out / PROBES_JSON, {})
    failures = {}
    todo = [c for c in cells if execute and not _finished(records.get(c.id), cell_config(spec, c, out / "cache"))]
    probe_task, wanted_probes = plan_probes(spec, cells, probes, execute)
    bar = tqdm(total=len(todo) + len(wanted_probes), unit="cell", desc="fedpft bench",
               disable=None if progress else True)
    interrupted = False
    restore = raise_on_sigterm()   # SIGTERM stops the bench like Ctrl-C
    try:
        run_probes(spec, wanted_probes, probe_task, out, probes, failures, bar)
        threads = spec.threads or (max(1, (os.cpu_count() or 1) // spec.jobs) if spec.jobs > 1 else None)
        with _env({"OMP_NUM_THREADS": str(threads)} if threads else {}):
            _run_cells(spec, _producers_first(spec, todo), out, records, failures, bar)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        restore()
        bar.close()
    if execute:
        write_json_atomic(out / FAILURES_JSON, failures)
    paths = _write_suite_report(spec, out, records, probes, notes, failures)
    return {"cells": len(cells), "ran": len(todo), "finished": sum(c.id in records for c in cells),
            "failures": failures, "notes": notes, "paths": paths, "interrupted": interrupted}


# ---------------------------------------------------------------------- command line
def add_arguments(parser) -> None:
    parser.add_argument("--cf", required=True, metavar="FILE", help="bench yaml (see fedml_config/bench.yaml)")
    parser.add_argument("--out", metavar="DIR", help="output directory; re-running with the same one resumes "
                        "(default: runs/bench-<config name>[-smoke])")
    parser.add_argument("--smoke", action="store_true", help="the tiny version of the suite (bench.smoke)")
    parser.add_argument("--methods", metavar="A,B", help="run only these methods of the suite")
    parser.add_argument("--tasks", metavar="X,Y", help="run only these tasks of the suite")
    parser.add_argument("--partitions", metavar="P,Q", help="run only these partitions of the suite (homo, hetero:1)")
    parser.add_argument("--seeds", metavar="0,1", help="the seeds of the suite (overrides bench.seeds; cells of "
                        "seeds already finished in --out are not run again)")
    parser.add_argument("--check", action="store_true", help="plan the cells and exit; runs and writes nothing")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: rewrite the report from the cells finished in --out")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads per cell and probe process "
                        "(OMP_NUM_THREADS; overrides bench.threads; 1 is faster on a busy machine)")
    parser.add_argument("--jobs", type=int, metavar="N", help="cells run side by side (overrides bench.jobs; "
                        "each gets cores // N torch threads unless --threads is given; probes always run alone)")


def run(args) -> int:
    spec = load_spec(args.cf, smoke=args.smoke)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads}: expected an integer >= 1")
        spec.threads = args.threads
    if args.jobs is not None:
        if args.jobs < 1:
            raise ConfigError(f"--jobs {args.jobs}: expected an integer >= 1")
        spec.jobs = args.jobs
    split = lambda text: [s.strip() for s in text.split(",") if s.strip()] if text else None  # noqa: E731
    if args.seeds is not None:
        try:
            seeds = [int(s) for s in split(args.seeds) or ()]
        except ValueError:
            seeds = []
        if not seeds:
            raise ConfigError(f"--seeds {args.seeds}: expected integers separated by commas (0,1,2)")
        spec.report_seeds = sorted(set(spec.seeds) | set(seeds))   # the report keeps the yaml's other seeds
        spec.seeds = sorted(set(seeds))
    tasks = spec.tasks + ([spec.vision_task] if spec.vision.get("model") else [])
    for option, chosen, allowed in (("--methods", split(args.methods), spec.methods),
                                    ("--tasks", split(args.tasks), tasks)):
        unknown = sorted(set(chosen or ()) - set(allowed))
        if unknown:
            raise ConfigError(f"{option}: {unknown} not in the suite of {spec.path.name}: expected some of "
                              f"{', '.join(allowed)}")
    out = Path(args.out or f"runs/bench-{spec.path.stem}{'-smoke' if args.smoke else ''}").expanduser().resolve()
    if args.check:
        cells, notes = plan_cells(spec, split(args.methods), split(args.tasks), split(args.partitions))
        for note in notes:
            print(f"fedpft bench: {note}")
        if not cells:
            raise ConfigError("bench: no cell to run (" + ("; ".join(notes) or "empty matrix") + ")")
        print(f"fedpft bench: check passed: {len(cells)} cell(s) of {spec.path.name} planned, "
              f"output in {out}; nothing was started or written")
        return 0
    summary = run_bench(spec, out, methods=split(args.methods), tasks=split(args.tasks),
                        partitions=split(args.partitions), execute=not args.report_only)
    for note in summary["notes"]:
        print(f"fedpft bench: {note}")
    for cell, error in summary["failures"].items():
        print(f"fedpft bench: failed {cell}: {error}", file=sys.stderr)
    print(f"fedpft bench: {summary['finished']} of {summary['cells']} cell(s) finished; report in {out}")
    table = summary["paths"].get("markdown")
    if table:
        print(Path(table).read_text(encoding="utf-8"))
    if summary["interrupted"]:
        print("fedpft bench: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0 if not summary["failures"] else 1
