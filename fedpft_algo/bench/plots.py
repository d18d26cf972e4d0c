"""The bench report's plots (matplotlib, written as PNG files beside ``results.md``)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Iterable, List, Optional



def mean(values: Iterable[Optional[float]]) -> Optional[float]:
    """The mean of the numbers in ``values`` (None and NaN left out); None when there are none."""
    values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def plots(out: Path, records, methods: List[str], groups) -> Dict[str, str]:
    """The suite's PNG plots in ``out``: accuracy and gradient error per round for every (task, partition)
    group of ``records``, one line per method (mean over seeds), and the client-cost bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    for name, key, ylabel in (("accuracy_per_round.png", "accuracy_per_round", "plugged-in FM accuracy"),
                              ("gradient_error.png", "grad_rel_error_per_round", "||g_proxy - g_FM|| / ||g_FM||")):
        cols = min(4, len(groups))
        rows = math.ceil(len(groups) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        drawn = False
        for ax, ((task, partition), group) in zip(axes.flat, groups):
            for method in methods:
                series = [r[key] for r in group if r["method"] == method and r.get(key)]
                if not series or all(v is None for v in series[0]):
                    continue
                length = min(len(s) for s in series)
                averaged = [mean(s[i] for s in series) for i in range(length)]
                ax.plot(range(1, length + 1), [float("nan") if v is None else v for v in averaged], marker=".",
                        label=method)
                drawn = True
            ax.set_title(f"{task}, {partition}", fontsize=9)
            ax.set_xlabel("round")
            ax.set_ylabel(ylabel, fontsize=8)
        for ax in axes.flat[len(groups):]:
            ax.axis("off")
        if drawn:
            axes.flat[0].legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(out / name, dpi=110)
            paths[name] = str(out / name)
        plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    panels = (("client_epoch_seconds", "client local epoch (s)", False),
              ("client_peak_mem_mb", "client peak RSS (MB)", False),
              ("upload_bytes_per_client_round", "upload per client per round (B)", True))
    for ax, (key, label, log) in zip(axes, panels):
        values = [mean(r.get(key) for r in records if r["method"] == m) for m in methods]
        ax.bar(methods, [0 if v is None else v for v in values], color="tab:blue")
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        if log:
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(out / "client_cost.png", dpi=110)
    plt.close(fig)
    paths["client_cost.png"] = str(out / "client_cost.png")
    return paths
