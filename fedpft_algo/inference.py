"""Using a finished run: the FM with the tuned LoRA (+ head) plugged in.

    from fedpft_algo.inference import load_tuned_model, predict
    model, encoder, label_names = load_tuned_model("runs/simulation_mpi-...")
    predict(model, encoder, ["a gripping, beautifully acted film"])

A decoder run (task kind ``instruction`` or ``language_modeling``) gives the causal-LM FM with the tuned
LoRA attached; :func:`answer` prompts it (greedy), and for an instruction run also picks the label by
lm-eval's multiple-choice rule, as the server scored it::

    model, tokenizer, label_names = load_tuned_model("runs/llm_simulation_mpi-...")
    answer(model, tokenizer, ["a gripping film"], prompting("runs/llm_simulation_mpi-..."))

From the shell: ``fedpft predict RUN_DIR "some text" ...`` (or ``--text "..."``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from safetensors.torch import load_file

from .config import FedPFTConfig, flatten, read_config
from .errors import FedPFTError
from .rundir.layout import RunDir


@dataclass(frozen=True)
class Prompting:
    """How a decoder run turned inputs into prompts: its task kind, prompt template and label answers
    (``template`` None: a language-modelling run, whose texts are continued as they are)."""

    kind: str
    template: Optional[str] = None
    answers: Tuple[str, ...] = ()


def _run_settings(run_dir: RunDir):
    weights = run_dir.final_weights
    if not weights.exists():
        raise FedPFTError(f"{weights} does not exist: not a finished fedpft run directory")
    flat = flatten(read_config(run_dir.config))
    return flat, FedPFTConfig.from_flat(flat), str(flat.get("model", "minilm-l6"))


def _task_kind(model_name: str, config: FedPFTConfig):
    from .models import load_model_config
    from .tasks import resolve_task_kind

    return resolve_task_kind(config.task_kind, load_model_config(model_name, 2, verify=False))


def load_tuned_model(run_dir, device="cpu") -> Tuple[torch.nn.Module, object, List[str]]:
    """``(model, tokenizer or image config, label names)`` for a finished run directory: the FM with the
    run's LoRA + head (a decoder: the causal LM with its LoRA; its output projection is the FM's own)."""
    from .core.lora import add_lora, plug_in_
    from .models import load_encoder, load_full_model, load_model_config

    run_dir = RunDir(Path(run_dir))
    _, config, model_name = _run_settings(run_dir)
    state = load_file(str(run_dir.final_weights))
    label_names = _label_names(run_dir)
    kind = _task_kind(model_name, config)
    heads = [v for k, v in state.items() if "modules_to_save" in k and k.endswith("bias")]
    num_labels = int(heads[-1].shape[0]) if heads and not kind.causal_lm else max(len(label_names), 2)
    torch.manual_seed(0)
    model = add_lora(load_full_model(model_name, num_labels, causal_lm=kind.causal_lm), config)
    plug_in_(model, state)
    encoder = load_encoder(model_name, load_model_config(model_name, num_labels))
    return model.to(device).eval(), encoder, label_names


def prompting(run_dir) -> Prompting:
    """The run's :class:`Prompting` (a classification run: kind ``classification``, no template)."""
    from .data.instruction import label_answers

    run_dir = RunDir(Path(run_dir))
    _, config, model_name = _run_settings(run_dir)
    kind = _task_kind(model_name, config)
    if kind.name != "instruction":
        return Prompting(kind.name)
    return Prompting(kind.name, config.prompt_template,
                     tuple(label_answers(_label_names(run_dir), config.label_answers)))


def _label_names(run_dir: RunDir) -> List[str]:
    partition = run_dir.partition_json
    if partition.exists():
        rows = json.loads(partition.read_text(encoding="utf-8"))
        if rows and isinstance(rows[0].get("label_counts"), dict):
            return list(rows[0]["label_counts"].keys())
    return []


@torch.no_grad()
def predict(model, tokenizer, texts: Sequence[str], max_length: int = 128) -> List[int]:
    batch = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
    return model(**batch).logits.argmax(dim=-1).tolist()


@torch.no_grad()
def answer(model, tokenizer, texts: Sequence[str], how: Prompting, max_new_tokens: int = 24) -> List[Dict]:
    """A decoder's greedy answer to each text: ``{"prompt", "answer"}``, and for an instruction run
    ``"label"``, the label answer with the highest summed log-probability after the prompt (lm-eval's rule).

    An instruction run wraps each text in its prompt template and the tokenizer's chat template, as
    training did; a language-modelling run continues each text as it is."""
    from .core.causal_lm import choice_scores, greedy_answer
    from .data import instruction

    results = []
    for text in texts:
        if how.template is None:
            prompt = str(text)
            context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        else:
            prompt = instruction.render_prompt(how.template, text, how.answers)
            context = instruction.encode_contexts(tokenizer, [text], how.template, how.answers)[0]
        if not context:
            raise FedPFTError(f"text {text!r} tokenises to nothing: give a non-empty prompt")
        ids = greedy_answer(model, context, tokenizer.eos_token_id, max_new_tokens)
        row = {"prompt": prompt, "answer": tokenizer.decode(ids, skip_special_tokens=True)}
        if how.answers:
            choices = instruction.encode_answers(tokenizer, how.answers)
            scores = choice_scores(model, [context], choices, instruction.pad_id(tokenizer))[0]
            row["label"] = how.answers[int(scores.argmax())]
        results.append(row)
    return results
