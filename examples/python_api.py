"""FedPFT's algorithm core without FedML: compress, align, tune LoRA on the sub-FM, plug into the FM.

    .venv/bin/python examples/python_api.py

Runs in about a minute on a 2-core CPU with the packaged MiniLM-L6 and Rotten Tomatoes.
"""
import torch

from fedpft_algo import FedPFTConfig, add_lora, build_sub_model, plug_in_, trainable_state
from fedpft_algo.core.alignment import align_layers_
from fedpft_algo.data import load_public, load_task
from fedpft_algo.data.loaders import encode_inputs, make_collator, make_loader
from fedpft_algo.core.evaluate import evaluate
from fedpft_algo.models import load_full_model, load_tokenizer


def main() -> None:
    torch.manual_seed(0)
    config = FedPFTConfig(ffn_keep_ratio=0.25, retained_layers=(0, 5))
    task = load_task("rotten_tomatoes", max_train=400, max_test=200)
    tokenizer = load_tokenizer("minilm-l6")
    full_model = load_full_model("minilm-l6", task.num_labels)

    # 1. the sub-FM (the FM is untouched) and 2. layer-level alignment on public, unlabelled text
    sub_model, keep_index = build_sub_model(full_model, config)
    public = encode_inputs(tokenizer, load_public(None, task=task, max_examples=400), 64)
    collate = make_collator(tokenizer)
    batches = list(make_loader(public, collator=collate, batch_size=16))
    report = align_layers_(full_model, sub_model, batches[4:], batches[:4], config.compressed_layers(6), steps=30)
    print(f"layer-level alignment: loss {report.mean_before:.3f} -> {report.mean_after:.3f}")

    # 3. LoRA + head on the sub-FM (what a client does)
    sub_model = add_lora(sub_model, config)
    train = make_loader(encode_inputs(tokenizer, task.train_inputs, 64), task.train_labels, collator=collate,
                        batch_size=16, shuffle=True)
    optimizer = torch.optim.AdamW([p for p in sub_model.parameters() if p.requires_grad], lr=8e-4)
    sub_model.train()
    for batch in train:
        loss = sub_model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    # 4. plug the tuned LoRA + head into the full FM and evaluate both
    full_model = add_lora(full_model, config)
    plug_in_(full_model, trainable_state(sub_model))
    test = make_loader(encode_inputs(tokenizer, task.test_inputs, 64), task.test_labels, collator=collate,
                       batch_size=32)
    print(f"sub-FM accuracy {evaluate(sub_model, test)['accuracy']:.3f}, "
          f"plugged-in FM accuracy {evaluate(full_model, test)['accuracy']:.3f}")


if __name__ == "__main__":
    main()
