"""Paired FL comparison of bench methods against a reference method: for each method, the mean over the
cells both ran (same task, partition and seed) of its accuracy minus the reference's, with the standard error
of that mean.

    python benchmarks/variants/paired.py benchmarks/variants/results.json
    python benchmarks/variants/paired.py benchmarks/base-variants/results.json benchmarks/base/results.json

Reads bench results.json files (the records of `fedpft bench`; pass files of one model); prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from fedpft_algo.bench.report import paired_gaps_by_cell

METRICS = {"final": "final_accuracy", "last3": "tail_accuracy"}   # other names: a record field as it is


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="bench results.json files (records are pooled)")
    parser.add_argument("--reference", default="fedpft")
    parser.add_argument("--metric", default="final", help="final, last3, or a record field (e.g. sub_accuracy)")
    args = parser.parse_args()
    records = [r for path in args.results for r in json.loads(path.read_text(encoding="utf-8"))]
    key = METRICS.get(args.metric, args.metric)
    print(f"| method | {args.metric} accuracy - {args.reference} (points), per cell | mean | s.e. | n |")
    print("|---|---|---|---|---|")
    for name in sorted({r["method"] for r in records} - {args.reference}):
        gaps = {cell: 100 * gap for cell, gap in sorted(paired_gaps_by_cell(records, name, args.reference,
                                                                            key=key).items(), key=str)}
        if not gaps:
            continue
        values = list(gaps.values())
        se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
        cells = ", ".join(f"{task[:4]} {part[:6]} s{seed} {d:+.1f}" for (task, part, seed), d in gaps.items())
        print(f"| {name} | {cells} | {statistics.mean(values):+.1f} | {se:.1f} | {len(values)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
