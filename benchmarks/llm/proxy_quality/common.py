"""The set-up the proxy_quality scripts share: SmolLM2-135M (the FM), the bench's Rotten Tomatoes instruction prompt,
a probe batch of test prompts (answer tokens labelled) and the server's public text, as the decoder bench builds them."""
import dataclasses
import os
from typing import NamedTuple

import torch

import fedpft_algo  # noqa: F401  (the package's compat set-up)
from fedpft_algo.config import FedPFTConfig
from fedpft_algo.data.loaders import encode_inputs, make_collator, make_loader
from fedpft_algo.data.public import load_public
from fedpft_algo.data.tasks import load_task
from fedpft_algo.models import load_encoder, load_full_model, load_tokenizer
from fedpft_algo.tasks import get_task_kind

MODEL = "smollm2-135m"
BASE = dict(prompt_template="Review: {text}\nIs this movie review positive or negative? Answer with one of: {choices}.",
            label_answers=["negative", "positive"], task_kind="instruction", retained_layers=[0, -1], lora_r=8,
            max_length=160)


def threads(value=None) -> int:
    n = int(value if value is not None else os.environ.get("THREADS", "1"))
    torch.set_num_threads(n)
    return n


class PublicSplit(NamedTuple):
    loader: object        # shuffled training batches (seeded)
    held_out: list        # the batches the alignment scores itself on
    texts: list           # the training texts, raw
    size: int             # texts encoded in all (the bench's cache key counts them)


@dataclasses.dataclass
class Setup:
    fm: torch.nn.Module
    kind: object          # the instruction task kind: .loss(model, batch) is the answer-token cross-entropy
    encoder: object
    task: object
    batch: dict           # the probe batch: test prompts through the chat template, answers labelled
    tokenizer: object

    def public(self, size=400, seed=0) -> "PublicSplit":
        """The server's public text, split into held-out and training batches as the bench's server splits it."""
        config = FedPFTConfig(**BASE)
        collator = make_collator(self.encoder)
        texts = load_public(None, task=self.task, max_examples=size, seed=seed)
        features = encode_inputs(self.encoder, texts, BASE["max_length"], None)
        n_eval = min(len(features) // 5, 4 * config.layer_align_batch_size)
        held_out = list(make_loader(features, indices=range(n_eval), collator=collator, batch_size=16))
        torch.manual_seed(seed)
        loader = make_loader(features, indices=range(n_eval, len(features)), collator=collator, batch_size=16,
                             shuffle=True, seed=seed)
        return PublicSplit(loader, held_out, list(texts[n_eval:]), len(features))


def setup(n_test=16) -> Setup:
    task = load_task("rotten_tomatoes")
    fm = load_full_model(MODEL, 2, causal_lm=True).eval()
    kind = get_task_kind("instruction")
    encoder = load_encoder(MODEL, fm.config)
    small = dataclasses.replace(task, test_inputs=task.test_inputs[:n_test], test_labels=task.test_labels[:n_test])
    batch = kind.probe_batch(kind.eval_set(encoder, small, FedPFTConfig(**BASE), n_test))
    return Setup(fm, kind, encoder, task, batch, load_tokenizer(MODEL))
