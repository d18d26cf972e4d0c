"""Paired FL comparison of bench methods against a reference method: for each method, the mean over the
cells both ran (same model, task, partition and seed) of its final accuracy minus the reference's, with the
standard error of that mean.

    python benchmarks/variants/paired.py benchmarks/variants/results.json
    python benchmarks/variants/paired.py benchmarks/base-variants/results.json benchmarks/base/results.json

Reads bench results.json files (the records of `fedpft bench`); prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def paired(records, reference: str, metric: str):
    by_cell = defaultdict(dict)
    for r in records:
        by_cell[(r["model"], r["task"], r["partition"], r["seed"])][r["method"]] = r
    rows = defaultdict(list)
    for key, methods in sorted(by_cell.items(), key=lambda kv: str(kv[0])):
        if reference not in methods:
            continue
        base = methods[reference]
        for name, r in methods.items():
            if name != reference:
                rows[name].append((key, _value(r, metric) - _value(base, metric)))
    return rows


def _value(record, metric: str) -> float:
    if metric == "final":
        return 100 * record["accuracy_per_round"][-1]
    if metric == "last3":
        return 100 * statistics.mean(record["accuracy_per_round"][-3:])
    return 100 * float(record[metric])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="bench results.json files (records are pooled)")
    parser.add_argument("--reference", default="fedpft")
    parser.add_argument("--metric", default="final", help="final, last3, or a record field (e.g. sub_model_accuracy)")
    args = parser.parse_args()
    records = [r for path in args.results for r in json.loads(path.read_text(encoding="utf-8"))]
    rows = paired(records, args.reference, args.metric)
    print(f"| method | {args.metric} accuracy - {args.reference} (points), per cell | mean | s.e. | n |")
    print("|---|---|---|---|---|")
    for name, diffs in sorted(rows.items()):
        values = [d for _, d in diffs]
        se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
        cells = ", ".join(f"{task[:4]} {part[:6]} s{seed} {d:+.1f}" for (_, task, part, seed), d in diffs)
        print(f"| {name} | {cells} | {statistics.mean(values):+.1f} | {se:.1f} | {len(values)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
