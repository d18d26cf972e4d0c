"""Client cost of the sub-FM against the FM on one device, fp32 and bf16, for config-built models of real shapes.

For each shape (BERT-base, MPNet-base, SmolLM2-135M, a ~1 B LLaMA) and each client kind the bench's
client-cost probe knows (``sub_model``: FedPFT's sub-FM skeleton + LoRA; ``full_lora``: the FM + LoRA,
FedPETuning's client), it builds the client exactly as the probe does (``fedpft_algo.bench.client_cost``:
the method's own ``client_model``, :func:`fedpft_algo.core.compression.build_sub_model_skeleton` and
:func:`fedpft_algo.core.lora.add_lora`; keep ratio 0.25, first and last layers whole, the package's
defaults) directly on the device, trains ``--steps`` steps of ``--batch`` x ``--seq`` random tokens with
the probe's optimiser step (AdamW on LoRA + head), under ``torch.autocast`` for bf16, and records epoch
seconds, tokens per second and peak device memory (``torch.cuda.max_memory_allocated``, reset before
the model is built: weights + optimiser state + activations). Random weights: time and memory depend on
the shapes, not the values. Writes ``client_cost.jsonl`` (one line per probe) and ``client_cost_summary.json``
(ratios against issue 14's targets) in ``--out``.

``--check`` builds every shape at a tiny scale (4 layers, hidden 32) on the CPU and runs 2 steps: the
script's own test, so that it cannot rot on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# name -> (model_type, config keys) of the real models' shapes
SHAPES = {
    "bert-base": ("bert", dict(num_hidden_layers=12, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                               vocab_size=30522, max_position_embeddings=512)),
    "mpnet-base": ("mpnet", dict(num_hidden_layers=12, hidden_size=768, intermediate_size=3072,
                                 num_attention_heads=12, vocab_size=30527, max_position_embeddings=514)),
    "smollm2-135m": ("llama", dict(num_hidden_layers=30, hidden_size=576, intermediate_size=1536,
                                   num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                   max_position_embeddings=8192, tie_word_embeddings=True, pad_token_id=2)),
    "llama-1b": ("llama", dict(num_hidden_layers=22, hidden_size=2048, intermediate_size=5632, num_attention_heads=32,
                               num_key_value_heads=8, vocab_size=32000, max_position_embeddings=2048, pad_token_id=0)),
}
TINY = dict(num_hidden_layers=4, hidden_size=32, intermediate_size=64, num_attention_heads=4, vocab_size=100,
            max_position_embeddings=64)
KINDS = ("sub_model", "full_lora")
PRECISIONS = ("fp32", "bf16")


def model_config(name: str, tiny: bool):
    from transformers import AutoConfig

    model_type, keys = SHAPES[name]
    keys = dict(keys)
    if tiny:
        keys.update(TINY)
        if "num_key_value_heads" in keys:
            keys["num_key_value_heads"] = 2
    return AutoConfig.for_model(model_type, num_labels=2, **keys)


ANSWER_TOKENS = 4   # decoder shapes: answer tokens per example (the loss and its logits cover these only)


def probe(name: str, kind: str, precision: str, device: str, *, steps: int, batch: int, seq: int, tiny: bool) -> dict:
    import torch

    from fedpft_algo.bench.client_cost import _client_model, _optimiser_step, peak_rss_mb
    from fedpft_algo.config import FedPFTConfig
    from fedpft_algo.core.arch import model_class_for
    from fedpft_algo.core.compression import count_parameters, flops_per_token
    from fedpft_algo.tasks import resolve_task_kind

    cuda = device.startswith("cuda")
    config = FedPFTConfig()   # keep ratio 0.25, layers 0 and -1 whole, LoRA r 8 on Q, K, V, O
    cfg = model_config(name, tiny)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    task_kind = resolve_task_kind("auto", cfg)   # decoders: instruction (answer-only loss); encoders: a head
    with torch.device(device):
        client, skeleton = _client_model(kind, cfg, config, model_class_for(cfg, causal_lm=task_kind.causal_lm))
    client.train()
    built = torch.cuda.memory_allocated(device) if cuda else None
    # the package's own client step: autocast under ``precision`` (and fp16's scaler), the task kind's loss
    params, step = _optimiser_step(kind, client, 8e-4, 5e-5, 0.01, device=device, precision=precision,
                                   loss_fn=task_kind.loss)
    generator = torch.Generator(device=device).manual_seed(0)
    low = 3 if cfg.model_type != "llama" else 1   # past the special ids

    def batch_of():
        ids = torch.randint(low, cfg.vocab_size, (batch, seq), device=device, generator=generator)
        if task_kind.causal_lm:   # an instruction example: the last ANSWER_TOKENS positions are the answer
            labels = torch.full_like(ids, -100)
            labels[:, -ANSWER_TOKENS:] = ids[:, -ANSWER_TOKENS:]
        else:
            labels = torch.randint(0, 2, (batch,), device=device, generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    batches = [batch_of() for _ in range(steps)]
    def run(items):
        for item in items:
            step(item)

    run(batches[:2])   # warm-up: allocations, kernels, optimiser state
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run(batches)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    row = {"shape": name, "kind": kind, "precision": precision, "device": device, "tiny": tiny, "steps": steps,
           "batch_size": batch, "seq_len": seq, "epoch_seconds": seconds, "tokens_per_second": steps * batch * seq / seconds,
           "peak_device_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
           "built_device_memory_mb": built / 2**20 if cuda else None, "peak_rss_mb": peak_rss_mb(),
           "total_parameters": count_parameters(client), "trainable_parameters": sum(p.numel() for p in params),
           "flops_per_token": flops_per_token(skeleton, seq), "layers": cfg.num_hidden_layers}
    del client, skeleton, params, step, batches
    if cuda:
        torch.cuda.empty_cache()
    return row


def summarise(rows: list) -> dict:
    """Per shape: sub-FM / FM ratios (epoch time per precision, FLOPs, peak memory) and bf16 / fp32 throughput,
    with issue 14's targets (time ratio <= 1.1 x FLOP ratio, memory ratio <= 0.7, bf16 >= 1.8 x fp32)."""
    by = {(r["shape"], r["kind"], r["precision"]): r for r in rows}
    summary = {}
    for name in dict.fromkeys(r["shape"] for r in rows):
        out = {}
        flop = by[(name, "sub_model", "fp32")]["flops_per_token"] / by[(name, "full_lora", "fp32")]["flops_per_token"]
        out["flop_ratio"] = flop
        for precision in PRECISIONS:
            sub, full = by.get((name, "sub_model", precision)), by.get((name, "full_lora", precision))
            if not (sub and full):
                continue
            time_ratio = sub["epoch_seconds"] / full["epoch_seconds"]
            out[f"time_ratio_{precision}"] = time_ratio
            out[f"time_target_met_{precision}"] = time_ratio <= 1.1 * flop
            if sub["peak_device_memory_mb"] is not None:
                memory = sub["peak_device_memory_mb"] / full["peak_device_memory_mb"]
                out[f"memory_ratio_{precision}"] = memory
                out[f"memory_target_met_{precision}"] = memory <= 0.7
        for kind in KINDS:
            fp32, bf16 = by.get((name, kind, "fp32")), by.get((name, kind, "bf16"))
            if fp32 and bf16:
                speedup = bf16["tokens_per_second"] / fp32["tokens_per_second"]
                out[f"bf16_speedup_{kind}"] = speedup
                out[f"bf16_target_met_{kind}"] = speedup >= 1.8
        summary[name] = out
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for client_cost.jsonl and client_cost_summary.json")
    parser.add_argument("--check", action="store_true", help="tiny shapes on the CPU, 2 steps (the script's test)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args(argv)
    import torch

    if args.check:
        device, steps, batch, seq = "cpu", 2, 2, 8
    elif not torch.cuda.is_available():
        print("client_cost_gpu: no CUDA device (use --check for the CPU dry run)", file=sys.stderr)
        return 2
    else:
        device, steps, batch, seq = "cuda:0", args.steps, args.batch, args.seq
        torch.backends.cuda.matmul.allow_tf32 = False   # fp32 means fp32 (the precision being compared)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(out / "client_cost.jsonl", "w", encoding="utf-8") as lines:
        for name in args.shapes:
            for precision in PRECISIONS:
                for kind in KINDS:
                    row = probe(name, kind, precision, device, steps=steps, batch=batch, seq=seq, tiny=args.check)
                    rows.append(row)
                    lines.write(json.dumps(row) + "\n")
                    lines.flush()
                    print(f"{name:<13} {kind:<9} {precision}: {row['epoch_seconds']:.3f} s, "
                          f"{row['tokens_per_second']:.0f} tok/s, peak {row['peak_device_memory_mb']} MiB", flush=True)
    summary = {"device": torch.cuda.get_device_name(0) if device != "cpu" else "cpu", "torch": torch.__version__,
               "shapes": summarise(rows)}
    (out / "client_cost_summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(json.dumps(summary["shapes"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
