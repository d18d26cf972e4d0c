"""The sub-FM variant tables of BENCHMARKS.md from benchmarks/sub-fm-variants/<model>/<variant>-s<seed>/compress_report.json."""
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ("weight", "activation", "sensitivity", "output")


def main() -> int:
    reports = {}
    for path in sorted(HERE.glob("*/*/compress_report.json")):
        variant, seed = path.parent.name.rsplit("-s", 1)
        reports[(path.parent.parent.name, variant, int(seed))] = json.loads(path.read_text(encoding="utf-8"))
    print("| model | variant | FLOP ratio | final hidden state loss after, per seed | mean | vs weight, paired |"
          " compressed-layer loss after, per seed | FFN widths (seed 0) | alignment s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in sorted({k[0] for k in reports}):
        base = {s: r for (m, v, s), r in reports.items() if m == model and v == "weight"}
        for variant in VARIANTS:
            runs = {s: r for (m, v, s), r in sorted(reports.items()) if m == model and v == variant}
            if not runs:
                continue
            out = [r["output_loss_after"] for r in runs.values()]
            layer = [r["layer_loss_mean_after"] for r in runs.values()]
            paired = [runs[s]["output_loss_after"] / base[s]["output_loss_after"] - 1 for s in runs if s in base]
            first = runs[min(runs)]
            print(f"| {model} | {variant} | {first['flops_per_token_ratio']:.3f} | "
                  f"{' / '.join(f'{v:.4f}' for v in out)} | {statistics.mean(out):.4f} | "
                  f"{', '.join(f'{100 * p:+.1f} %' for p in paired) if variant != 'weight' else '-'} | "
                  f"{' / '.join(f'{v:.4f}' for v in layer)} | {list(first['kept_neurons'].values())} | "
                  f"{statistics.mean(r['alignment_seconds'] for r in runs.values()):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
