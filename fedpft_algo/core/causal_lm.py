"""Decoder (causal-LM) pieces of FedPFT: instruction examples, the answer-only loss, lm-eval scoring.

Pure functions over ``transformers`` causal LMs (LLaMA-style decoders such as SmolLM2), bare or
wrapped by PEFT:

* :func:`encode_instruction` turns a (prompt, answer) pair into token ids with the tokenizer's chat
  template and labels that cover the answer tokens only (``-100`` elsewhere);
* :func:`answer_loss` is the mean cross-entropy over those answer tokens. It runs the decoder once and
  applies the output projection only at the positions that predict a label: a 49,152-way projection
  at every position is the largest single cost of a small decoder's training step;
* :func:`choice_logprobs` / :func:`score_choices` follow lm-evaluation-harness's multiple-choice rule:
  the sum of the log-probabilities of each candidate answer's tokens after the prompt; the best wins;
* :func:`perplexity` is ``exp`` of the mean next-token negative log-likelihood over non-padding tokens.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError

IGNORE_INDEX = -100


# ---------------------------------------------------------------------- examples
def chat_prompt(tokenizer, prompt: str) -> str:
    """``prompt`` as the user's turn of the tokenizer's chat template, ending where the answer starts."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
    return prompt + "\n"


def encode_instruction(tokenizer, prompt: str, answer: str, max_length: int) -> Dict[str, List[int]]:
    """Token ids of prompt + answer (+ end of sequence) and labels that are ``-100`` outside the answer.

    Raises :class:`DataError` when the answer tokenises to nothing or the prompt leaves no room for
    the answer within ``max_length`` (a truncated prompt would silently train on another question).
    """
    prompt_ids = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not answer_ids:
        raise DataError(f"answer {answer!r} tokenises to nothing: give every label a non-empty answer text")
    if tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    if len(prompt_ids) + len(answer_ids) > max_length:
        raise DataError(f"prompt + answer are {len(prompt_ids) + len(answer_ids)} tokens, more than "
                        f"fedpft_max_length={max_length}: raise fedpft_max_length or shorten the prompt")
    return {"input_ids": prompt_ids + answer_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids}


def pad_batch(examples: Sequence[Dict[str, List[int]]], pad_id: int) -> Dict[str, torch.Tensor]:
    """Right-pad ``input_ids`` (and ``labels`` with ``-100``) into tensors with an attention mask."""
    width = max(len(e["input_ids"]) for e in examples)
    batch = {"input_ids": torch.full((len(examples), width), pad_id, dtype=torch.long),
             "attention_mask": torch.zeros((len(examples), width), dtype=torch.long)}
    if "labels" in examples[0]:
        batch["labels"] = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        batch["input_ids"][row, :n] = torch.tensor(example["input_ids"])
        batch["attention_mask"][row, :n] = 1
        if "labels" in batch:
            batch["labels"][row, :n] = torch.tensor(example["labels"])
    return batch


# ---------------------------------------------------------------------- the model's two halves
def _causal_lm(model: nn.Module) -> nn.Module:
    """The ``...ForCausalLM`` module inside a PEFT wrapper (or the model itself)."""
    while not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
        inner = getattr(model, "base_model", None)
        inner = getattr(inner, "model", inner)
        if inner is None or inner is model:
            raise TypeError(f"{type(model).__name__} has no output projection (not a causal LM)")
        model = inner
    return model


causal_lm_of = _causal_lm  # public name: the causal LM inside a wrapper (TypeError for other models)


def hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The decoder's last hidden states (after its final norm), without the output projection."""
    lm = _causal_lm(model)
    return lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def logits_at(model: nn.Module, hidden: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Output-projection logits only at positions ``(rows[i], cols[i])``: shape ``(len(rows), vocab)``."""
    return _causal_lm(model).get_output_embeddings()(hidden[rows, cols])


def _label_positions(labels: torch.Tensor):
    """Positions whose next token is a label: position t predicts token t + 1."""
    rows, cols = torch.nonzero(labels[:, 1:] != IGNORE_INDEX, as_tuple=True)
    return rows, cols, labels[rows, cols + 1]


# ---------------------------------------------------------------------- training loss
def answer_loss(model: nn.Module, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens, with logits computed only where a label is predicted."""
    hidden = hidden_states(model, batch["input_ids"], batch["attention_mask"])
    rows, cols, targets = _label_positions(batch["labels"])
    if targets.numel() == 0:
        raise ValueError("a batch without answer tokens has no loss")
    return F.cross_entropy(logits_at(model, hidden, rows, cols).float(), targets)


# ---------------------------------------------------------------------- evaluation
@torch.no_grad()
def choice_logprobs(model: nn.Module, tokenizer, prompt: str, choices: Sequence[str]) -> torch.Tensor:
    """Sum of log p(choice tokens | prompt) for every candidate (lm-eval's multiple-choice score)."""
    context = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    examples = []
    for choice in choices:
        answer = tokenizer(choice, add_special_tokens=False)["input_ids"]
        if not answer:
            raise DataError(f"answer {choice!r} tokenises to nothing: give every label a non-empty answer text")
        examples.append({"input_ids": context + answer, "labels": [IGNORE_INDEX] * len(context) + answer})
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = pad_batch(examples, pad_id)
    hidden = hidden_states(model, batch["input_ids"], batch["attention_mask"])
    rows, cols, targets = _label_positions(batch["labels"])
    logprobs = torch.log_softmax(logits_at(model, hidden, rows, cols).float(), dim=-1)
    picked = logprobs.gather(1, targets[:, None]).squeeze(1)
    return torch.zeros(len(choices), dtype=picked.dtype).index_add_(0, rows, picked)


def score_choices(model: nn.Module, tokenizer, prompts: Iterable[str], choices: Sequence[str]) -> List[int]:
    """The index of the best-scoring candidate for every prompt."""
    return [int(choice_logprobs(model, tokenizer, prompt, choices).argmax()) for prompt in prompts]


@torch.no_grad()
def perplexity(model: nn.Module, batches: Iterable[Dict[str, torch.Tensor]]) -> float:
    """``exp`` of the mean next-token NLL over every non-padding token that has a predecessor."""
    total, count = 0.0, 0
    for batch in batches:
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        hidden = hidden_states(model, batch["input_ids"], batch["attention_mask"])
        rows, cols, targets = _label_positions(labels)
        logits = logits_at(model, hidden, rows, cols).float()
        total += F.cross_entropy(logits, targets, reduction="sum").item()
        count += targets.numel()
    if count == 0:
        raise ValueError("no tokens to score")
    return math.exp(total / count)


@torch.no_grad()
def choice_scores(model: nn.Module, contexts: Sequence[Sequence[int]], choices: Sequence[Sequence[int]],
                  pad_id: int, batch_size: int = 16) -> torch.Tensor:
    """``(len(contexts), len(choices))``: sum of log p(choice tokens | context) (token ids; lm-eval's rule).

    Every (context, choice) pair is one right-padded row; ``batch_size`` contexts go through the model at
    once, and the output projection runs only at the positions that predict a choice token.
    """
    scores = torch.zeros(len(contexts), len(choices), dtype=torch.float64)
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start:start + batch_size]
        examples = [{"input_ids": list(c) + list(a), "labels": [IGNORE_INDEX] * len(c) + list(a)}
                    for c in chunk for a in choices]
        batch = pad_batch(examples, pad_id)
        hidden = hidden_states(model, batch["input_ids"], batch["attention_mask"])
        rows, cols, targets = _label_positions(batch["labels"])
        logprobs = torch.log_softmax(logits_at(model, hidden, rows, cols).float(), dim=-1)
        picked = logprobs.gather(1, targets[:, None]).squeeze(1).double()
        flat = torch.zeros(len(examples), dtype=torch.float64).index_add_(0, rows, picked)
        scores[start:start + len(chunk)] = flat.view(len(chunk), len(choices))
    return scores


@torch.no_grad()
def greedy_answer(model: nn.Module, context: Sequence[int], eos_id, max_new_tokens: int = 24) -> List[int]:
    """Greedy continuation of ``context`` (token ids) until end of sequence or ``max_new_tokens``."""
    ids = list(context)
    out: List[int] = []
    for _ in range(max_new_tokens):
        input_ids = torch.tensor([ids])
        hidden = hidden_states(model, input_ids, torch.ones_like(input_ids))
        token = int(logits_at(model, hidden, torch.tensor([0]), torch.tensor([len(ids) - 1])).argmax(-1))
        if eos_id is not None and token == eos_id:
            break
        ids.append(token)
        out.append(token)
    return out


@torch.no_grad()
def lm_totals(model: nn.Module, batches: Iterable[Dict[str, torch.Tensor]], device="cpu"):
    """(summed NLL, predicted tokens, top-1 hits) of next-token prediction at every label position."""
    total, count, correct = 0.0, 0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = hidden_states(model, batch["input_ids"], batch["attention_mask"])
        rows, cols, targets = _label_positions(batch["labels"])
        logits = logits_at(model, hidden, rows, cols).float()
        total += F.cross_entropy(logits, targets, reduction="sum").item()
        count += targets.numel()
        correct += (logits.argmax(-1) == targets).sum().item()
    return total, count, correct
