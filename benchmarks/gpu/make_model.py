"""A config-built (random-weight) model folder of MiniLM-L6's shape for the GPU check's FedPFT simulation.

    python benchmarks/gpu/make_model.py OUT_DIR --tokenizer TOKENIZER_DIR [--tiny]

Writes ``config.json``, the weights (``save_pretrained``) and the tokenizer files copied from
``--tokenizer`` (the bundle's copy of the packaged MiniLM tokenizer). ``--tiny``: 4 layers, hidden 32
(the script's CPU check).
"""
import argparse
import shutil
import sys
from pathlib import Path

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    import fedpft_algo  # noqa: F401  (its compat fixes first: transformers may import a torchvision it must patch)
    import torch
    from transformers import BertConfig, BertModel

    shape = dict(num_hidden_layers=4, hidden_size=32, intermediate_size=64, num_attention_heads=4) if args.tiny else \
        dict(num_hidden_layers=6, hidden_size=384, intermediate_size=1536, num_attention_heads=12)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=30522, max_position_embeddings=512, **shape))
    out = Path(args.out)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (Path(args.tokenizer) / name).exists():
            shutil.copy(Path(args.tokenizer) / name, out / name)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
