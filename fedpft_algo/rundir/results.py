"""Per-round results of a run as users see them: progress lines, ``metrics.csv``, ``metrics.json``
and ``accuracy.png``.

The server participant appends one JSON object per finished round to ``<run_dir>/metrics.jsonl``
(keys at least ``round`` (FedML's 0-based round_idx), ``accuracy, sub_accuracy, loss, upload_bytes,
download_bytes, round_seconds, align``); what users see counts rounds from 1. The supervisor
tails that file while the run goes on (:class:`fedpft_algo.rundir.records.MetricsTail`) and,
after a successful run, ``fedpft run`` calls :func:`write_results` with the collected rounds.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .layout import RunDir

logger = logging.getLogger(__name__)

# Columns that come first in metrics.csv, in this order; any other key follows in order of appearance.
STANDARD_COLUMNS = ("round", "accuracy", "sub_accuracy", "loss", "upload_bytes", "download_bytes",
                    "round_seconds", "align")


def format_bytes(n: Optional[float]) -> str:
    """``1234567`` -> ``'1.2 MB'`` (decimal units, as network traffic is usually counted)."""
    if not _is_number(n):
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def format_round(record: Dict[str, Any], done: int, total: int) -> str:
    """One progress line: ``round 3/10  acc 0.712  sub_acc 0.690  loss 0.58  up 1.2 MB  34.1 s``.

    ``done`` is the number of rounds finished so far (it does not depend on whether the
    participant counts ``round`` from 0 or 1).
    """
    parts = [f"round {done}/{total}",
             f"acc {_fmt(record.get('accuracy'), '.3f')}",
             f"sub_acc {_fmt(record.get('sub_accuracy'), '.3f')}",
             f"loss {_fmt(record.get('loss'), '.3g')}",
             f"up {format_bytes(record.get('upload_bytes'))}",
             f"{_fmt(record.get('round_seconds'), '.1f')} s"]
    if record.get("align"):
        parts.append("(neuron-level alignment)")
    return "  ".join(parts)


def write_results(run_dir: os.PathLike, rounds: Sequence[Dict[str, Any]]) -> Tuple[Path, Path, Optional[Path]]:
    """Write ``metrics.csv``, ``metrics.json`` and ``accuracy.png`` into ``run_dir``; return their paths.

    The plot is skipped (``None`` returned for it) when no round has an accuracy.
    """
    run_dir = RunDir(Path(run_dir))
    rounds = [dict(r) for r in rounds]
    json_path = run_dir.metrics_json
    json_path.write_text(json.dumps(rounds, indent=1) + "\n", encoding="utf-8")

    csv_path = run_dir.metrics_csv
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=_columns(rounds), restval="")
        writer.writeheader()
        for record in rounds:
            writer.writerow({k: _csv_value(v) for k, v in record.items()})

    png_path = run_dir.accuracy_png
    return csv_path, json_path, png_path if plot_accuracy(rounds, png_path) else None


def plot_accuracy(rounds: Sequence[Dict[str, Any]], path: Path) -> bool:
    """Accuracy of the full model and of the sub-model per round; dotted lines mark alignment rounds.

    Uses matplotlib's Agg canvas directly (no pyplot state, no display needed). Returns False when
    there is nothing to plot, or when matplotlib is missing (a machine set up by hand, such as the GPU
    check's: the run's results are in metrics.json/csv; the plot is the one thing left out, with a warning).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ModuleNotFoundError:
        logger.warning("matplotlib is not installed: %s not written (pip install matplotlib)", path)
        return False

    x = list(range(1, len(rounds) + 1))   # 1-based, like the progress lines (``round`` is 0-based)
    series = [(key, label) for key, label in (("accuracy", "full model (FM + plugged-in LoRA)"),
                                              ("sub_accuracy", "sub-model"))
              if any(_is_number(r.get(key)) for r in rounds)]
    if not series:
        logger.warning("no round has an accuracy: %s not written", path)
        return False
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for key, label in series:
        ax.plot(x, [r.get(key) if _is_number(r.get(key)) else math.nan for r in rounds],
                marker="o", label=label)
    for xi, record in zip(x, rounds):
        if record.get("align"):
            ax.axvline(xi, color="grey", linestyle=":", linewidth=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round (dotted: neuron-level alignment after this round)")
    ax.set_ylabel("test accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return True


# ---------------------------------------------------------------------- helpers
def _columns(rounds: Iterable[Dict[str, Any]]) -> List[str]:
    seen = {}
    for record in rounds:
        for key in record:
            seen.setdefault(key, None)
    return [c for c in STANDARD_COLUMNS if c in seen] + [k for k in seen if k not in STANDARD_COLUMNS]


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if _is_number(value) else "-"
