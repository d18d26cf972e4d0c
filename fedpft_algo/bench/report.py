"""The bench's records and report: ``results.json``, ``results.csv``, ``results.md`` and PNG plots.

A record is one finished cell: what its server wrote per round (``metrics.jsonl``: accuracy,
bytes, alignment times, gradient error) summarised, plus the client cost its method's probe
measured in a process of its own (:mod:`fedpft_algo.bench.client_cost`). The targets of the
benchmark (issue 5) are computed from the records, never assumed.
"""
from __future__ import annotations

import csv
import math
import os
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .client_cost import kind_of
from .llm_report import sections as llm_sections
from .plots import mean as _mean, plots
from ..files import write_json_atomic

CSV_COLUMNS = ("method", "task", "partition", "seed", "model", "rounds", "final_accuracy", "best_accuracy",
               "tail_accuracy",
               "sub_accuracy", "macro_f1", "upload_bytes_per_client_round", "download_bytes_per_client_round",
               "initial_download_bytes", "client_epoch_seconds", "client_peak_mem_mb", "client_model_mem_mb",
               "client_tokens_per_second", "client_peak_device_mem_mb",
               "client_trainable_parameters", "flops_ratio", "client_epoch_seconds_in_run", "server_align_seconds",
               "layer_align_seconds", "neuron_align_seconds", "grad_rel_error_init", "grad_rel_error_final",
               "grad_cosine_final", "wall_seconds")


ZERO_SHOT_KEYS = tuple(f"{who}_zero_shot_{metric}" for who in ("fm", "proxy")
                       for metric in ("accuracy", "macro_f1", "perplexity"))


def model_name(model: str) -> str:
    """A model as tables show it: its name, or a model directory's folder name."""
    return Path(model).name if os.sep in model else model


def cell_record(cell, rounds: Sequence[Dict[str, Any]], wall_seconds: float) -> Dict[str, Any]:
    """Summarise one cell's per-round rows (the server's ``metrics.jsonl``)."""
    rows = sorted(rounds, key=lambda r: r["round"])
    if not rows:
        raise ValueError(f"cell {cell.id}: no rounds")
    first, last = rows[0], rows[-1]
    accuracy = [r["accuracy"] for r in rows]
    neuron = sum(r.get("align_seconds") or 0.0 for r in rows)
    layer = first.get("layer_align_seconds") or 0.0
    return {
        "cell": cell.id, "method": cell.method, "task": cell.task, "partition": cell.partition, "seed": cell.seed,
        "model": cell.model, "suite": cell.suite, "rounds": len(rows),
        "final_accuracy": last["accuracy"], "best_accuracy": max(accuracy),
        "sub_accuracy": last.get("sub_accuracy"), "macro_f1": last.get("macro_f1"),
        "upload_bytes_per_client_round": _mean(r.get("upload_bytes") for r in rows),
        "download_bytes_per_client_round": _mean(r.get("download_bytes") for r in rows),
        "client_epoch_seconds_in_run": _mean(r.get("client_epoch_seconds") for r in rows),
        "layer_align_seconds": layer, "neuron_align_seconds": neuron, "server_align_seconds": layer + neuron,
        "prepare_seconds": first.get("prepare_seconds"),
        "grad_rel_error_init": first.get("grad_rel_error_init"), "grad_cosine_init": first.get("grad_cosine_init"),
        "grad_rel_error_final": last.get("grad_rel_error_after", last.get("grad_rel_error_before")),
        "grad_cosine_final": last.get("grad_cosine_after", last.get("grad_cosine_before")),
        "wall_seconds": wall_seconds,
        "accuracy_per_round": accuracy,
        "sub_accuracy_per_round": [r.get("sub_accuracy") for r in rows],
        "grad_rel_error_per_round": [r.get("grad_rel_error_before") for r in rows],
        "grad_rel_error_after_per_round": [r.get("grad_rel_error_after") for r in rows],
        # decoders (fedpft_algo.tasks): perplexity of a language-modelling task, and the zero-shot scores of
        # the FM and of the proxy the server measured before round 0 (the field's zero-shot rows)
        "perplexity": last.get("perplexity"), "sub_perplexity": last.get("sub_perplexity"),
        **{key: first[key] for key in ZERO_SHOT_KEYS if key in first},
    }


TAIL_ROUNDS = 3


def add_client_cost(record: Dict[str, Any], probes: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Merge the probe of the record's (model, client kind) into the record, and derive the tail accuracy.

    ``tail_accuracy`` is the mean over the last :data:`TAIL_ROUNDS` rounds: with few clients per round
    and label-skewed clients the last round alone depends much on which clients it sampled.
    """
    tail = record.get("accuracy_per_round") or []
    record["tail_accuracy"] = _mean(tail[-TAIL_ROUNDS:])
    kind = kind_of(record.get("base_method", record["method"]))
    probe = probes.get(record.get("probe") or f"{record['model']}|{kind}") or {}
    full = probes.get(f"{record['model']}|full_lora") or probes.get(f"{record['model']}|full_model") or {}
    flops, full_flops = probe.get("flops_per_token"), full.get("flops_per_token")
    record.update({
        "client_kind": kind,
        "client_epoch_seconds": probe.get("epoch_seconds"), "client_peak_mem_mb": probe.get("peak_rss_mb"),
        "client_model_mem_mb": (probe["peak_rss_mb"] - probe["base_rss_mb"]) if probe else None,
        "client_tokens_per_second": probe.get("tokens_per_second"),
        "client_peak_device_mem_mb": probe.get("peak_device_mem_mb"),   # None: the probe ran on a CPU
        "client_trainable_parameters": probe.get("trainable_parameters"),
        "initial_download_bytes": probe.get("client_model_bytes"),
        "flops_per_token": flops, "flops_ratio": flops / full_flops if flops and full_flops else None,
    })
    return record


# ---------------------------------------------------------------------- aggregation helpers
def _by(records, *keys) -> Dict[tuple, List[Dict[str, Any]]]:
    groups = defaultdict(list)
    for r in records:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups


def _ordered_methods(records) -> List[str]:
    from .spec import ALL_METHODS

    present = {r["method"] for r in records}
    return [m for m in ALL_METHODS if m in present] + sorted(present - set(ALL_METHODS))  # then the variants


def _fmt(value, kind: str = "float") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "pct":
        return f"{100 * value:.1f}"
    if kind == "points":
        return f"{value:+.1f}"
    if kind == "bytes":
        from ..rundir.results import format_bytes

        return format_bytes(value)
    if kind == "int":
        return f"{int(value):,}"
    if kind == "s":
        return f"{value:.1f}"
    return f"{value:.3f}"


def paired_gaps_by_cell(records, better: str, worse: str, tasks: Optional[Iterable[str]] = None,
                        key: str = "final_accuracy") -> Dict[Tuple[str, str, int], float]:
    """(task, partition, seed) -> key(better) - key(worse), for every pair of cells both finished."""
    index = {(r["method"], r["task"], r["partition"], r["seed"]): r.get(key) for r in records
             if r.get(key) is not None}
    return {(t, p, s): index[(better, t, p, s)] - acc for (m, t, p, s), acc in index.items()
            if m == worse and (better, t, p, s) in index and (tasks is None or t in tasks)}


def paired_gaps(records, better: str, worse: str, tasks: Optional[Iterable[str]] = None,
                key: str = "final_accuracy") -> List[float]:
    """The gaps of :func:`paired_gaps_by_cell`."""
    return list(paired_gaps_by_cell(records, better, worse, tasks, key).values())


def paired_gap(records, better: str, worse: str, tasks: Optional[Iterable[str]] = None,
               key: str = "final_accuracy") -> Optional[float]:
    """Mean of :func:`paired_gaps`."""
    return _mean(paired_gaps(records, better, worse, tasks, key))


def _spread(gaps: Sequence[float]) -> str:
    """How sure a mean gap is: the number of pairs and the standard error of their mean, in points."""
    if not gaps:
        return ""
    if len(gaps) < 2:
        return f"{len(gaps)} pair"
    mean = sum(gaps) / len(gaps)
    se = math.sqrt(sum((g - mean) ** 2 for g in gaps) / (len(gaps) - 1) / len(gaps))
    return f"{len(gaps)} pairs, s.e. {100 * se:.1f}"


def targets(records, probes) -> List[Dict[str, Any]]:
    """Issue 5's targets, computed from this bench's records and probes."""
    text = {r["task"] for r in records if r.get("suite", "text") == "text"}
    rows = []

    def add(name, value, goal, met, unit="", detail=""):
        rows.append({"target": name, "measured": value, "goal": goal, "met": met, "unit": unit, "detail": detail})

    gap_targets = (("fedpft", "fedot", "FedPFT - FedOT", ">= +2.5", lambda points: points >= 2.5),
                   ("fedpetuning", "fedpft", "FedPETuning - FedPFT", "<= 1.0", lambda points: points <= 1.0))
    for key, what in (("final_accuracy", "final round"), ("tail_accuracy", f"mean of last {TAIL_ROUNDS} rounds")):
        for better, worse, name, goal, met in gap_targets:
            gaps = paired_gaps(records, better, worse, text, key)
            points = None if not gaps else 100 * _mean(gaps)
            add(f"{name} accuracy ({what}), mean over text tasks (points)", points, goal,
                None if points is None else met(points), "points", _spread(gaps))
    for model in sorted({r["model"] for r in records}):
        sub, full = probes.get(f"{model}|sub_model"), probes.get(f"{model}|full_lora")
        if sub and full:
            flops = sub["flops_per_token"] / full["flops_per_token"]
            ratio = sub["epoch_seconds"] / full["epoch_seconds"]
            name = model_name(model)
            add(f"client epoch time sub-FM / FM ({name}; FLOP ratio {flops:.3f})", ratio,
                f"<= {1.1 * flops:.3f} (1.1 x FLOP ratio)", ratio <= 1.1 * flops)
            mem = sub["peak_rss_mb"] / full["peak_rss_mb"]
            add(f"client peak memory sub-FM / FM ({name}, whole process)", mem, "<= 0.7", mem <= 0.7)
            delta_full = full["peak_rss_mb"] - full["base_rss_mb"]
            if delta_full > 0:
                delta = (sub["peak_rss_mb"] - sub["base_rss_mb"]) / delta_full
                add(f"client model memory sub-FM / FM ({name}, peak minus RSS before the model)", delta, "<= 0.7",
                    delta <= 0.7)
    for model in sorted({r["model"] for r in records}):
        fedpft_up, fedavg_up = (_mean(r["upload_bytes_per_client_round"] for r in records
                                      if r["method"] == method and r["model"] == model)
                                for method in ("fedpft", "fedavg"))
        if fedpft_up and fedavg_up:
            add(f"upload per client per round, FedPFT / full-model FedAvg ({model_name(model)})",
                fedpft_up / fedavg_up, "<= 1 %", fedpft_up / fedavg_up <= 0.01, "ratio")
    fedpft_runs = [r for r in records if r["method"] == "fedpft" and r["wall_seconds"]]
    share = _mean(r["neuron_align_seconds"] / r["wall_seconds"] for r in fedpft_runs)
    if share is not None:
        shapes = sorted({(sum(e is not None for e in r.get("grad_rel_error_after_per_round") or ()), r["rounds"])
                         for r in fedpft_runs})
        shape = ", ".join(f"{n} alignment(s) in {rounds} rounds" for n, rounds in shapes)
        add(f"neuron-level alignment share of a FedPFT run's wall time ({shape}; the goal is for t = 10)", share,
            "<= 15 %", share <= 0.15, "ratio")
    means = {m: _mean(r["final_accuracy"] for r in records if r["method"] == m and r["task"] in text)
             for m in ("fedpft", "fedpft_b", "fedpft_d", "fedpft_n")}   # text: the vision cells run fedpft only
    if all(v is not None for v in means.values()):
        order = " ".join(f"{m} {100 * v:.1f}" for m, v in sorted(means.items(), key=lambda kv: -kv[1]))
        ok = means["fedpft"] >= max(means["fedpft_b"], means["fedpft_d"]) and \
            min(means["fedpft_b"], means["fedpft_d"]) >= means["fedpft_n"]
        add("ablation order full >= _B, _D >= _N (mean accuracy %)", order, "full >= _B, _D >= _N", ok, "text")
    return rows


# ---------------------------------------------------------------------- writing
def write_report(out: Path, records: List[Dict[str, Any]], probes: Dict[str, Dict[str, Any]],
                 notes: Sequence[str] = (), shown=None) -> Dict[str, str]:
    """``results.json`` gets every record; the CSV, markdown and plots those ``shown(record)`` accepts."""
    out = Path(out)
    records = [add_client_cost(dict(r), probes) for r in records]
    write_json_atomic(out / "results.json", records)
    if shown is not None:
        records = [r for r in records if shown(r)]
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow(r)
    paths = {"json": str(out / "results.json"), "csv": str(out / "results.csv")}
    if records:
        (out / "results.md").write_text(markdown(records, probes, notes), encoding="utf-8")
        paths["markdown"] = str(out / "results.md")
        paths.update(plots(out, records, _ordered_methods(records), sorted(_by(records, "task", "partition").items())))
    return paths


def markdown(records, probes, notes=()) -> str:
    methods = _ordered_methods(records)
    partitions = sorted({r["partition"] for r in records})
    lines = ["# FedPFT bench", "",
             f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()} {os.cpu_count()} CPU core(s), "
             f"{platform.python_version()}. Accuracy in %, mean over seeds; client cost measured by separate probe "
             f"processes (one local epoch); bytes per client per round from the serialised payloads.", ""]
    lines += _md_cell_tables(records, methods)
    lines += _md_task_tables(records, methods, partitions)
    lines += _md_text_means(records, methods, partitions)
    lines += _md_probe_table(probes)
    lines += _md_targets_table(records, probes)
    lines += llm_sections(records, probes)   # decoder cells: the five-number table and their targets
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _md_cell_tables(records, methods) -> List[str]:
    """One table per (task, partition): every method's accuracy, bytes and cost."""
    lines = []
    header = (f"| method | final acc | best acc | last-{TAIL_ROUNDS} acc | sub-FM acc | macro-F1 | upload/client/round "
              "| download/client/round | client epoch s | client peak MB | FLOPs ratio | server align s "
              "| grad rel. error | wall s |")
    for (task, partition), group in sorted(_by(records, "task", "partition").items()):
        lines += [f"## {task}, {partition}", "", header, "|" + "---|" * 14]
        for method in methods:
            rs = [r for r in group if r["method"] == method]
            if not rs:
                continue
            m = lambda key: _mean(r.get(key) for r in rs)  # noqa: E731
            lines.append(f"| {method} | {_fmt(m('final_accuracy'), 'pct')} | {_fmt(m('best_accuracy'), 'pct')} "
                         f"| {_fmt(m('tail_accuracy'), 'pct')} "
                         f"| {_fmt(m('sub_accuracy'), 'pct')} | {_fmt(m('macro_f1'), 'pct')} "
                         f"| {_fmt(m('upload_bytes_per_client_round'), 'bytes')} "
                         f"| {_fmt(m('download_bytes_per_client_round'), 'bytes')} "
                         f"| {_fmt(m('client_epoch_seconds'), 's')} "
                         f"| {_fmt(m('client_peak_mem_mb'), 's')} | {_fmt(m('flops_ratio'))} "
                         f"| {_fmt(m('server_align_seconds'), 's')} | {_fmt(m('grad_rel_error_final'))} "
                         f"| {_fmt(m('wall_seconds'), 's')} |")
        lines.append("")
    return lines


def _md_task_tables(records, methods, partitions) -> List[str]:
    """One table per partition: final accuracy per method and task (text tasks first)."""
    lines = []
    for partition in partitions:
        group = [r for r in records if r["partition"] == partition]
        tasks = sorted({r["task"] for r in group}, key=lambda t: (t not in {r["task"] for r in group
                                                                           if r.get("suite", "text") == "text"}, t))
        lines += [f"## Final accuracy per task, {partition} (sub-FM alone in parentheses)", "",
                  "| method | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
        for method in methods:
            cells = []
            for task in tasks:
                rs = [r for r in group if r["method"] == method and r["task"] == task]
                final, sub = _mean(r["final_accuracy"] for r in rs), _mean(r.get("sub_accuracy") for r in rs)
                proxy = sub is not None and final is not None and any(r.get("flops_ratio") != 1.0 for r in rs)
                cells.append(_fmt(final, "pct") + (f" ({_fmt(sub, 'pct')})" if proxy else ""))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _md_text_means(records, methods, partitions) -> List[str]:
    """Mean final and tail accuracy over the text tasks, per method and partition."""
    text = [r for r in records if r.get("suite", "text") == "text"]
    columns = [(p, key) for p in partitions for key in ("final_accuracy", "tail_accuracy")]
    lines = ["## Mean accuracy over the text tasks", "",
             "| method | " + " | ".join(f"{p} {'final' if k == 'final_accuracy' else f'last-{TAIL_ROUNDS}'}"
                                        for p, k in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for method in methods:
        cells = [_fmt(_mean(r.get(k) for r in text if r["method"] == method and r["partition"] == p), "pct")
                 for p, k in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _md_probe_table(probes) -> List[str]:
    """The client-cost probes, one row each."""
    lines = ["", "## Client cost (probe processes)", "",
             "| model | client kind | epoch s | steps | tokens/s | peak RSS MB | model MB (peak - base) "
             "| peak device MB | trainable params | FLOPs/token | first download |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, p in sorted(probes.items()):
        variant = key.split("|")[2:]   # a variant with client-cost settings of its own has its own probe
        kind = p["kind"] + (f" ({variant[0]})" if variant else "")
        lines.append(f"| {model_name(p['model'])} | {kind} | {_fmt(p['epoch_seconds'], 's')} | {p['steps']} "
                     f"| {_fmt(p.get('tokens_per_second'), 's')} "
                     f"| {_fmt(p['peak_rss_mb'], 's')} | {_fmt(p['peak_rss_mb'] - p['base_rss_mb'], 's')} "
                     f"| {_fmt(p.get('peak_device_mem_mb'), 's')} "
                     f"| {_fmt(p['trainable_parameters'], 'int')} | {_fmt(p['flops_per_token'], 'int')} "
                     f"| {_fmt(p['client_model_bytes'], 'bytes')} |")
    return lines


def _md_targets_table(records, probes) -> List[str]:
    """Issue 5's targets (:func:`targets`): measured value, goal, met."""
    lines = ["", "## Targets", "", "| target | measured | goal | met |", "|---|---|---|---|"]
    for t in targets(records, probes):
        kind = {"ratio": "pct", "points": "points"}.get(t["unit"], "float")
        value = t["measured"] if t["unit"] == "text" else _fmt(t["measured"], kind)
        if t["unit"] == "ratio" and t["measured"] is not None and t["measured"] < 0.1:
            value = f"{100 * t['measured']:.2f}"   # small shares (upload) need two decimals
        if t["unit"] == "ratio" and value != "-":
            value += " %"
        if t.get("detail"):
            value += f" ({t['detail']})"
        met = "-" if t["met"] is None else ("yes" if t["met"] else "no")
        lines.append(f"| {t['target']} | {value} | {t['goal']} | {met} |")
    return lines
