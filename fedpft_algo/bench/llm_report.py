"""The decoder bench's report sections: the field's five-number table per task, and the decoder issue's targets.

The field (Offsite-Tuning, CRaSh, ScaleOT, GradOT) reports five numbers per task: the FM zero-shot, the FM
fine-tuned (here FedPETuning), the sub-FM (emulator) zero-shot, the sub-FM fine-tuned and the plug-in (the FM
with the LoRA tuned on the sub-FM); FedOT (a layer-drop emulator) and FedPFT_N (no alignment) are added. The
zero-shot numbers are what the server measured before round 0 (``fm_zero_shot_*`` / ``proxy_zero_shot_*`` in
a cell's first row), so they need no cells of their own: the FM's from every cell that has it, the sub-FM's
from the ``fedpft`` cells (the layer-aligned sub-FM). An instruction task is scored by accuracy (lm-eval's
multiple-choice rule), a language-modelling task by held-out perplexity (lower is better).

Everything here is computed from the records and probes; a number that is missing is shown as ``-`` and a
target without its numbers is "not measured".
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

from .plots import mean as _mean

PLUG_IN, FM_TUNED, NO_ALIGNMENT, LAYER_DROP = "fedpft", "fedpetuning", "fedpft_n", "fedot"
COLUMNS = ("FM zero-shot", "FedPETuning", "sub-FM zero-shot", "sub-FM tuned", "plug-in", "FedOT", "FedPFT_N")


def is_decoder_bench(records) -> bool:
    """Whether the records come from decoder cells (the server wrote zero-shot rows)."""
    return any(r.get("fm_zero_shot_accuracy") is not None or r.get("perplexity") is not None for r in records)


def _perplexity_task(records, task: str) -> bool:
    return any(r.get("perplexity") is not None for r in records if r["task"] == task)


def five_numbers(records, task: str, partition: Optional[str] = None) -> Dict[str, Optional[float]]:
    """The seven numbers of ``task`` (mean over seeds, and over partitions when ``partition`` is None):
    accuracy in %, or perplexity for a language-modelling task."""
    rs = [r for r in records if r["task"] == task and (partition is None or r["partition"] == partition)]
    ppl = _perplexity_task(records, task)
    final, sub, metric = ("perplexity", "sub_perplexity", "perplexity") if ppl else \
        ("final_accuracy", "sub_accuracy", "accuracy")
    scale = 1.0 if ppl else 100.0

    def of(method, key):
        value = _mean(r.get(key) for r in rs if r["method"] == method)
        return None if value is None else scale * value

    fm_zero = _mean(r.get(f"fm_zero_shot_{metric}") for r in rs)
    return {"FM zero-shot": None if fm_zero is None else scale * fm_zero,
            "FedPETuning": of(FM_TUNED, final), "sub-FM zero-shot": of(PLUG_IN, f"proxy_zero_shot_{metric}"),
            "sub-FM tuned": of(PLUG_IN, sub), "plug-in": of(PLUG_IN, final), "FedOT": of(LAYER_DROP, final),
            "FedPFT_N": of(NO_ALIGNMENT, final)}


def _gaps(records, better: str, worse: str, tasks) -> List[float]:
    """Points of accuracy, better - worse, for every (task, partition, seed) both finished."""
    index = {(r["method"], r["task"], r["partition"], r["seed"]): r["final_accuracy"] for r in records
             if r["task"] in tasks and r.get("final_accuracy") is not None}
    return [100 * (index[(better, t, p, s)] - value) for (m, t, p, s), value in index.items()
            if m == worse and (better, t, p, s) in index]


def _mean_se(values: Sequence[float]):
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def targets(records, probes) -> List[Dict[str, Any]]:
    """The decoder issue's targets: measured value (points or ratio), goal, met (None: not measured)."""
    instruction = sorted({r["task"] for r in records if not _perplexity_task(records, r["task"])})
    rows = []

    def add(name, values, limit, goal, at_most=False, unit="points"):
        """A target: the mean of ``values`` at least ``limit`` (at most, with ``at_most``)."""
        mean, se = _mean_se(values)
        detail = "" if mean is None else (f"{len(values)} pair(s)" + (f", s.e. {se:.1f}" if se is not None else ""))
        met = None if mean is None else (mean <= limit if at_most else mean >= limit)
        # A mean on the goal's side by less than its standard error is met (or missed) by the mean only.
        within_se = mean is not None and se is not None and abs(mean - limit) < se
        rows.append({"target": name, "measured": mean, "goal": goal, "unit": unit, "detail": detail,
                     "met": met, "within_se": within_se})

    add("plug-in - FedPETuning, accuracy points (instruction tasks, partitions, seeds)",
        _gaps(records, PLUG_IN, FM_TUNED, instruction), -1.0, ">= -1.0")
    add("plug-in - FedPFT_N, accuracy points", _gaps(records, PLUG_IN, NO_ALIGNMENT, instruction), 2.0, ">= +2.0")
    add("plug-in - FedOT, accuracy points", _gaps(records, PLUG_IN, LAYER_DROP, instruction), 2.0, ">= +2.0")
    drops = [100 * (r["fm_zero_shot_accuracy"] - r["proxy_zero_shot_accuracy"]) for r in records
             if r["method"] == PLUG_IN and r["task"] in instruction
             and r.get("fm_zero_shot_accuracy") is not None and r.get("proxy_zero_shot_accuracy") is not None]
    add("FM zero-shot - sub-FM zero-shot, accuracy points (the proxy is no replacement for the FM)", drops,
        5.0, ">= +5.0")
    for model in sorted({r["model"] for r in records}):
        sub, full = probes.get(f"{model}|sub_model"), probes.get(f"{model}|full_lora")
        name = model.rsplit("/", 1)[-1]
        if not (sub and full):
            rows.append({"target": f"client cost ({name})", "measured": None, "goal": "probes of sub_model and "
                         "full_lora", "unit": "ratio", "detail": "", "met": None})
            continue
        memory = (sub["peak_rss_mb"] - sub["base_rss_mb"]) / max(full["peak_rss_mb"] - full["base_rss_mb"], 1e-9)
        add(f"client model memory sub-FM / FedPETuning client ({name}; peak minus RSS before the model)",
            [memory], 0.6, "<= 0.60", at_most=True, unit="ratio")
        flops = sub["flops_per_token"] / full["flops_per_token"]
        add(f"client epoch time sub-FM / FM ({name}; FLOP ratio {flops:.3f})",
            [sub["epoch_seconds"] / full["epoch_seconds"]], 1.1 * flops, f"<= {1.1 * flops:.3f} (1.1 x FLOP ratio)",
            at_most=True, unit="ratio")
    return rows


def _fmt(value, ppl: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if ppl else f"{value:.1f}"


def sections(records, probes) -> List[str]:
    """Markdown: the five-number tables (per task and partition, and per task) and the targets; [] for
    records of an encoder bench."""
    if not is_decoder_bench(records):
        return []
    tasks = sorted({r["task"] for r in records})
    partitions = sorted({r["partition"] for r in records})
    lines = ["", "## The five-number table (decoder; mean over seeds)", "",
             "Accuracy in % by lm-eval's multiple-choice rule (instruction tasks), or held-out perplexity "
             "(language-modelling tasks, marked ppl; lower is better). FM and sub-FM zero-shot: the server's scores "
             "before round 0; sub-FM tuned: the sub-FM with the final LoRA; plug-in: the FM with it.", "",
             "| task | partition | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 2)]
    for task in tasks:
        ppl = _perplexity_task(records, task)
        for partition in partitions + [None]:
            numbers = five_numbers(records, task, partition)
            if all(v is None for v in numbers.values()):
                continue
            where = partition or "**all**"
            lines.append(f"| {task}{' (ppl)' if ppl else ''} | {where} | "
                         + " | ".join(_fmt(numbers[c], ppl) for c in COLUMNS) + " |")
    lines += ["", "## Targets of the decoder bench", "", "| target | measured | goal | met |", "|---|---|---|---|"]
    for t in targets(records, probes):
        value = "-" if t["measured"] is None else (f"{t['measured']:+.1f}" if t["unit"] == "points"
                                                   else f"{t['measured']:.3f}")
        if t["detail"]:
            value += f" ({t['detail']})"
        met = "not measured" if t["met"] is None else ("yes" if t["met"] else "no")
        if t.get("within_se"):
            met += " (by the mean; the goal is within one s.e.)"
        lines.append(f"| {t['target']} | {value} | {t['goal']} | {met} |")
    return lines
