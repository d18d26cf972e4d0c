"""Decoder inputs: a labelled task as prompt -> answer (instruction), or its texts as language modelling.

* :func:`label_answers` — the answer text of each label (the label names, or ``fedpft_label_answers``);
* :func:`render_prompt` — one input in the prompt template (``{text}``: the input, a pair as
  ``"first\\nsecond"``; ``{choices}``: the answers joined by ``", "``);
* :func:`chat_affixes` — the tokenizer's chat template around a user turn, as (prefix, suffix) strings,
  so that thousands of prompts are wrapped by concatenation and tokenised in one batch call;
* :func:`encode_instructions` — token ids of chat(prompt) + answer + end of sequence with labels that
  are ``-100`` outside the answer (the loss covers the answer tokens only); a prompt that does not fit
  ``max_length`` is an error naming the example, never silently truncated;
* :func:`encode_contexts` / :func:`encode_answers` — what the multiple-choice scorer needs: the chat
  prompt of every example and the token ids of every label's answer (no end of sequence, as lm-eval);
* :func:`encode_lm` — language modelling: each text (+ end of sequence), truncated to ``max_length``,
  labels = input ids;
* :class:`CausalCollator` — right-pads ``input_ids`` / ``attention_mask`` / ``labels`` (``-100``).

The token-level twins used for a single prompt live in :mod:`fedpft_algo.core.causal_lm` (this layer
may not import core); both wrap prompts with the same chat template.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import DataError

IGNORE_INDEX = -100
_MARK = "\u0000FEDPFT\u0000"


def label_answers(label_names: Sequence[str], answers: Sequence[str] = ()) -> List[str]:
    """The answer text of each label: ``answers`` when given (one per label), else the label names."""
    if answers and len(answers) != len(label_names):
        raise DataError(f"fedpft_label_answers has {len(answers)} answers, the task has {len(label_names)} labels "
                        f"({', '.join(map(str, label_names))}): give one answer per label, in label order")
    return [str(a) for a in (answers or label_names)]


def render_prompt(template: str, text, answers: Sequence[str]) -> str:
    """``template`` with ``{text}`` (a pair: its two parts on two lines) and ``{choices}`` filled."""
    text = "\n".join(text) if isinstance(text, tuple) else str(text)
    return template.replace("{choices}", ", ".join(answers)).replace("{text}", text)


def chat_affixes(tokenizer) -> Tuple[str, str]:
    """(prefix, suffix) of the chat template's user turn, ending where the answer starts."""
    if not getattr(tokenizer, "chat_template", None):
        return "", "\n"
    wrapped = tokenizer.apply_chat_template([{"role": "user", "content": _MARK}], add_generation_prompt=True,
                                            tokenize=False)
    if wrapped.count(_MARK) != 1:
        raise DataError("the tokenizer's chat template does not keep the user's text as given")
    prefix, suffix = wrapped.split(_MARK)
    return prefix, suffix


def _ids(tokenizer, texts: Sequence[str]) -> List[List[int]]:
    out: List[List[int]] = []
    for start in range(0, len(texts), 1024):
        out += tokenizer(list(texts[start:start + 1024]), add_special_tokens=False)["input_ids"]
    return out


def encode_answers(tokenizer, answers: Sequence[str]) -> List[List[int]]:
    """Token ids of each answer; an answer that tokenises to nothing is an error naming it."""
    ids = _ids(tokenizer, list(answers))
    for answer, tokens in zip(answers, ids):
        if not tokens:
            raise DataError(f"label answer {answer!r} tokenises to nothing: give every label a non-empty answer "
                            f"text (fedpft_label_answers)")
    return ids


def encode_contexts(tokenizer, inputs: Sequence, template: str, answers: Sequence[str]) -> List[List[int]]:
    """Token ids of every input's chat prompt (the context the answers are scored after)."""
    prefix, suffix = chat_affixes(tokenizer)
    return _ids(tokenizer, [prefix + render_prompt(template, x, answers) + suffix for x in inputs])


def encode_instructions(tokenizer, inputs: Sequence, labels: Sequence[int], template: str, answers: Sequence[str],
                        max_length: int, where: str = "task") -> List[Dict[str, np.ndarray]]:
    """Training examples: chat(prompt) + answer (+ eos), labels ``-100`` outside the answer tokens."""
    answer_ids = encode_answers(tokenizer, answers)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    contexts = encode_contexts(tokenizer, inputs, template, answers)
    features = []
    for i, (context, label) in enumerate(zip(contexts, labels)):
        answer = answer_ids[int(label)] + eos
        if len(context) + len(answer) > max_length:
            raise DataError(f"{where} example {i}: prompt + answer are {len(context) + len(answer)} tokens, more than "
                            f"fedpft_max_length={max_length}: raise fedpft_max_length or shorten the prompt")
        ids = np.asarray(context + answer, dtype=np.int64)
        features.append({"input_ids": ids, "attention_mask": np.ones_like(ids),
                         "labels": np.asarray([IGNORE_INDEX] * len(context) + answer, dtype=np.int64)})
    return features


def longest_instruction(tokenizer, inputs: Sequence, labels: Sequence[int], template: str,
                        answers: Sequence[str]) -> Tuple[int, int]:
    """(index, tokens) of the longest prompt + answer (+ eos) of a split: the pre-flight's length check."""
    answer_ids = encode_answers(tokenizer, answers)
    extra = 1 if tokenizer.eos_token_id is not None else 0
    lengths = [len(c) + len(answer_ids[int(y)]) + extra
               for c, y in zip(encode_contexts(tokenizer, inputs, template, answers), labels)]
    index = int(np.argmax(lengths))
    return index, int(lengths[index])


def encode_lm(tokenizer, texts: Sequence, max_length: int) -> List[Dict[str, np.ndarray]]:
    """Language-modelling examples: each text + eos, truncated to ``max_length``, labels = input ids.

    One feature per text, in order (the client split indexes them); a text of one token predicts nothing."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    features = []
    for tokens in _ids(tokenizer, ["\n".join(t) if isinstance(t, tuple) else str(t) for t in texts]):
        ids = np.asarray((tokens + eos)[:max_length], dtype=np.int64)
        features.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids.copy()})
    if not any(len(f["input_ids"]) >= 2 for f in features):
        raise DataError("no text of at least two tokens to model")
    return features


class CausalCollator:
    """Right-pads ``input_ids`` (with ``pad_token_id``), ``attention_mask`` (0) and ``labels`` (-100)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = int(pad_token_id)

    def __call__(self, features: List[dict]) -> Dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        fill = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        batch = {}
        for key, value in fill.items():
            if key not in features[0]:
                continue
            out = torch.full((len(features), width), value, dtype=torch.long)
            for row, feature in enumerate(features):
                out[row, :len(feature[key])] = torch.as_tensor(feature[key], dtype=torch.long)
            batch[key] = out
        return batch


def pad_id(tokenizer) -> Optional[int]:
    """The id to pad with: the pad token, else end of sequence."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
