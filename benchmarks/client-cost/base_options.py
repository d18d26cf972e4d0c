"""Client-cost options (issue 15): time, memory and accuracy effect of each, measured interleaved.

    # time and peak memory: one probe process per (option set, client kind), the sets interleaved, ROUNDS times
    python benchmarks/client-cost/base_options.py cost --model mpnet-base --examples 16 --batch-size 8 --rounds 2
    # accuracy effect: fixed-seed local training of a sub-FM client (real FM weights, weight-saliency sub-FM,
    # no alignment), one epoch, then the sub-FM's test accuracy; per option set and seed
    python benchmarks/client-cost/base_options.py accuracy --model minilm-l6 --train 400 --test 300 --epochs 2 --lr 2e-3 --seeds 0 1

Each writes one JSON line per measurement to --out (appending) and prints a table of medians and ranges.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PAPER = {"client_backbone_dropout": True, "shared_lora_dropout": False}   # the paper's clients
OPTION_SETS = {   # "default" is named for what the defaults were when base_options.jsonl was measured
    "default": PAPER,
    "no_backbone_dropout": {**PAPER, "client_backbone_dropout": False},
    "shared_lora_dropout": {**PAPER, "shared_lora_dropout": True},
    "both": {"client_backbone_dropout": False, "shared_lora_dropout": True},   # the defaults since issue 15
    "both+compile": {"client_backbone_dropout": False, "shared_lora_dropout": True, "compile": True},
}


def _probe(model, kind, values, args) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")   # the probe sets the allocator for its memory epoch itself
    command = [sys.executable, "-m", "fedpft_algo.bench.client_cost", "--model", model, "--kind", kind,
               "--task", args.task, "--examples", str(args.examples), "--batch-size", str(args.batch_size),
               "--repeats", str(args.repeats), "--config-json", json.dumps(values)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cost(args) -> list:
    rows = []
    sets = [s for s in args.sets]
    for round_index in range(args.rounds):
        order = sets if round_index % 2 == 0 else sets[::-1]  # alternate the order between rounds
        for name in order:
            for kind in args.kinds:
                result = _probe(args.model, kind, OPTION_SETS[name], args)
                row = {"what": "cost", "options": name, "round": round_index, **result}
                rows.append(row)
                _append(args.out, row)
                print(f"{name:22s} {kind:10s} epoch {result['epoch_seconds']:.2f}s "
                      f"model MB {result['peak_rss_mb'] - result['base_rss_mb']:.0f} "
                      f"warm-up step {result['warmup_step_seconds']:.1f}s", flush=True)
    return rows


def accuracy(args) -> list:
    import torch

    import fedpft_algo  # noqa: F401
    from fedpft_algo.config import FedPFTConfig
    from fedpft_algo.core.client_speed import apply_client_options_
    from fedpft_algo.core.compression import build_sub_model
    from fedpft_algo.core.evaluate import evaluate
    from fedpft_algo.core.lora import add_lora
    from fedpft_algo.data.loaders import encode_inputs, make_collator, make_loader
    from fedpft_algo.data.tasks import load_task
    from fedpft_algo.models import load_encoder, load_full_model, load_model_config

    rows = []
    for seed in args.seeds:
        task = load_task(args.task, max_train=args.train, max_test=args.test, seed=seed)
        model_config = load_model_config(args.model, task.num_labels)
        encoder = load_encoder(args.model, model_config)
        collator = make_collator(encoder)
        train_x = encode_inputs(encoder, task.train_inputs, 64)
        test = list(make_loader(encode_inputs(encoder, task.test_inputs, 64), task.test_labels, collator=collator,
                                batch_size=32))
        torch.manual_seed(seed)
        full = load_full_model(args.model, task.num_labels)
        for name in args.sets:
            config = FedPFTConfig(**OPTION_SETS[name])
            sub, _ = build_sub_model(full, config)
            torch.manual_seed(seed)
            client = add_lora(sub, config)
            forward = apply_client_options_(client, config)
            client.train()
            params = [p for p in client.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
            loader = make_loader(train_x, task.train_labels, collator=collator, batch_size=8, shuffle=True, seed=seed)
            torch.manual_seed(seed)
            start = time.perf_counter()
            for _ in range(args.epochs):
                for batch in loader:
                    loss = forward(**batch).loss
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            seconds = time.perf_counter() - start
            result = evaluate(client, test)
            row = {"what": "accuracy", "options": name, "seed": seed, "model": args.model, "task": args.task,
                   "train": len(task.train_labels), "test": len(task.test_labels), "epochs": args.epochs, "lr": args.lr,
                   "accuracy": result["accuracy"], "test_loss": result["loss"], "train_seconds": seconds}
            rows.append(row)
            _append(args.out, row)
            print(f"seed {seed} {name:22s} accuracy {result['accuracy']:.3f} ({seconds:.0f}s)", flush=True)
    return rows


def _append(path, row) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def table(path) -> str:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = []
    costs = [r for r in rows if r["what"] == "cost"]
    if costs:
        lines += ["| model | options | kind | epoch s median (min-max) | model MB median (min-max) | n |",
                  "|---|---|---|---|---|---|"]
        for key in sorted({(r["model"], r["options"], r["kind"]) for r in costs}):
            group = [r for r in costs if (r["model"], r["options"], r["kind"]) == key]
            times = [r["epoch_seconds"] for r in group]
            mem = [r["peak_rss_mb"] - r["base_rss_mb"] for r in group]
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {statistics.median(times):.2f} ({min(times):.2f}-"
                         f"{max(times):.2f}) | {statistics.median(mem):.0f} ({min(mem):.0f}-{max(mem):.0f}) | {len(group)} |")
    accs = [r for r in rows if r["what"] == "accuracy"]
    if accs:
        lines += ["", "| model | options | accuracy per seed | mean |", "|---|---|---|---|"]
        for key in sorted({(r["model"], r["options"]) for r in accs}):
            group = sorted((r for r in accs if (r["model"], r["options"]) == key), key=lambda r: r["seed"])
            values = [r["accuracy"] for r in group]
            lines.append(f"| {key[0]} | {key[1]} | {' / '.join(f'{v:.3f}' for v in values)} | "
                         f"{statistics.mean(values):.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("cost", "accuracy", "table"))
    parser.add_argument("--model", default="mpnet-base")
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--sets", nargs="+", default=list(OPTION_SETS), choices=list(OPTION_SETS))
    parser.add_argument("--kinds", nargs="+", default=["sub_model", "full_lora"])
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=8e-4, help="client learning rate (accuracy)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default=str(Path(__file__).with_name("base_options.jsonl")))
    args = parser.parse_args()
    if args.what == "cost":
        cost(args)
    elif args.what == "accuracy":
        accuracy(args)
    print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
