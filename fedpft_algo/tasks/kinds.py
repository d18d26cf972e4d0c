"""The built-in task kinds: ``classification`` (encoders, ViTs), ``instruction`` and ``language_modeling``
(decoders). See :mod:`fedpft_algo.tasks`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..core import causal_lm
from ..core.evaluate import evaluate as evaluate_classifier, macro_f1
from ..core.gradient_error import probe_batch
from ..data import instruction as encode
from ..data.loaders import encode_inputs, make_collator, make_loader
from ..errors import DataError
from .base import TaskKind

PROBE_EXAMPLES = 16   # decoders: examples of the gradient-error batch (prompt + gold answer)


class Classification(TaskKind):
    """A classification head on the FM: ``model(**batch).loss``, accuracy + macro-F1 (the paper's setting)."""

    name = "classification"

    def features(self, encoder, task, config, split, cache_dir=None):
        return (encode_inputs(encoder, getattr(task, f"{split}_inputs"), config.max_length, cache_dir),
                getattr(task, f"{split}_labels"))

    def collator(self, encoder):
        return make_collator(encoder)

    def loss(self, model, batch):
        return model(**batch).loss

    def eval_set(self, encoder, task, config, batch_size, cache_dir=None):
        test_x = encode_inputs(encoder, task.test_inputs, config.max_length, cache_dir)
        return make_loader(test_x, task.test_labels, collator=make_collator(encoder), batch_size=batch_size)

    def evaluate(self, model, eval_set, device="cpu"):
        return evaluate_classifier(model.to(device), eval_set, device)

    def probe_batch(self, eval_set):
        return probe_batch(eval_set)


@dataclass
class ChoiceSet:
    """An instruction test split for lm-eval's multiple-choice rule: chat-prompt ids, gold labels, the token
    ids of every label's answer, and (prompt + gold answer) features for the gradient-error probe."""

    contexts: List[List[int]]
    labels: List[int]
    choices: List[List[int]]
    answers: List[str]
    pad_id: int
    eos_id: Optional[int]
    prompt: str                     # the fixed prompt of the per-round sample (the first test example)
    probe: Dict[str, torch.Tensor]
    tokenizer: Any = None
    batch_size: int = 16


class Instruction(TaskKind):
    """Labelled text as prompt -> answer on a decoder, scored as lm-eval multiple choice."""

    name = "instruction"
    causal_lm = True

    @staticmethod
    def _answers(task, config):
        return encode.label_answers(task.label_names, config.label_answers)

    def check(self, encoder, task, config):
        if task.modality != "text":
            raise DataError(f"task {task.name!r} is an image task: a decoder takes text")
        answers = self._answers(task, config)
        encode.encode_answers(encoder, answers)
        for split in ("train", "test"):
            index, tokens = encode.longest_instruction(encoder, getattr(task, f"{split}_inputs"),
                                                       getattr(task, f"{split}_labels"), config.prompt_template,
                                                       answers)
            if tokens > config.max_length:
                raise DataError(f"fedpft_max_length={config.max_length} is too short: {split} example {index} of "
                                f"task {task.name!r} is {tokens} tokens as prompt + answer (raise "
                                f"fedpft_max_length to {tokens}, or shorten fedpft_prompt_template)")

    def _features(self, encoder, task, config, split):
        return encode.encode_instructions(encoder, getattr(task, f"{split}_inputs"), getattr(task, f"{split}_labels"),
                                          config.prompt_template, self._answers(task, config), config.max_length,
                                          where=f"task {task.name!r} {split}")

    def features(self, encoder, task, config, split, cache_dir=None):
        return self._features(encoder, task, config, split), None

    def collator(self, encoder):
        return encode.CausalCollator(encode.pad_id(encoder))

    def loss(self, model, batch):
        return causal_lm.answer_loss(model, batch)

    def eval_set(self, encoder, task, config, batch_size, cache_dir=None):
        answers = self._answers(task, config)
        probe = self._features(encoder, task, config, "test")[:PROBE_EXAMPLES]
        return ChoiceSet(contexts=encode.encode_contexts(encoder, task.test_inputs, config.prompt_template, answers),
                         labels=[int(y) for y in task.test_labels], choices=encode.encode_answers(encoder, answers),
                         answers=answers, pad_id=encode.pad_id(encoder), eos_id=encoder.eos_token_id,
                         prompt=encode.render_prompt(config.prompt_template, task.test_inputs[0], answers),
                         probe=self.collator(encoder)(probe), tokenizer=encoder, batch_size=batch_size)

    def evaluate(self, model, eval_set: ChoiceSet, device="cpu"):
        model = model.to(device)
        was_training = model.training
        model.eval()
        try:
            scores = causal_lm.choice_scores(model, eval_set.contexts, eval_set.choices, eval_set.pad_id,
                                             eval_set.batch_size)
        finally:
            model.train(was_training)
        gold = torch.tensor(eval_set.labels)
        pred = scores.argmax(-1)
        gold_nll = -scores.gather(1, gold[:, None]).squeeze(1)
        correct = int((pred == gold).sum())
        return {"accuracy": correct / len(gold), "macro_f1": macro_f1(pred, gold), "loss": float(gold_nll.mean()),
                "test_correct": correct, "test_total": len(gold), "test_loss": float(gold_nll.sum())}

    def probe_batch(self, eval_set: ChoiceSet):
        return {k: v.clone() for k, v in eval_set.probe.items()}

    def sample(self, model, eval_set: ChoiceSet, device="cpu"):
        was_training = model.training
        model.eval()
        try:
            ids = causal_lm.greedy_answer(model, eval_set.contexts[0], eval_set.eos_id)
        finally:
            model.train(was_training)
        return {"prompt": eval_set.prompt, "answer": eval_set.tokenizer.decode(ids, skip_special_tokens=True),
                "gold": eval_set.answers[eval_set.labels[0]]}


class LanguageModeling(TaskKind):
    """The task's texts as a corpus: next-token loss on every token, held-out perplexity."""

    name = "language_modeling"
    causal_lm = True

    def check(self, encoder, task, config):
        if task.modality != "text":
            raise DataError(f"task {task.name!r} is an image task: a decoder takes text")

    def features(self, encoder, task, config, split, cache_dir=None):
        return encode.encode_lm(encoder, getattr(task, f"{split}_inputs"), config.max_length), None

    def collator(self, encoder):
        return encode.CausalCollator(encode.pad_id(encoder))

    def loss(self, model, batch):
        return causal_lm.answer_loss(model, batch)

    def eval_set(self, encoder, task, config, batch_size, cache_dir=None):
        features = encode.encode_lm(encoder, task.test_inputs, config.max_length)
        return make_loader(features, collator=self.collator(encoder), batch_size=batch_size)

    def evaluate(self, model, eval_set, device="cpu"):
        model = model.to(device)
        was_training = model.training
        model.eval()
        try:
            total, count, correct = causal_lm.lm_totals(model, eval_set, device)
        finally:
            model.train(was_training)
        if count == 0:
            raise ValueError("no tokens to score")
        return {"accuracy": correct / count, "macro_f1": float("nan"), "loss": total / count,
                "perplexity": math.exp(total / count), "test_correct": correct, "test_total": count,
                "test_loss": total}

    def probe_batch(self, eval_set):
        return probe_batch(eval_set, PROBE_EXAMPLES)


BUILTIN: Sequence[TaskKind] = (Classification(), Instruction(), LanguageModeling())
