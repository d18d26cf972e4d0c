"""Task kinds, registered by name: ``fedpft_task_kind`` in the yaml selects one (``auto``: the model decides).

A task kind is a :class:`~fedpft_algo.tasks.base.TaskKind`: everything in which what clients learn
differs, as :mod:`fedpft_algo.methods` is for how they learn it. The runtime asks the resolved kind
(:func:`resolve_task_kind`) at each point where the kinds differ:

==================================  ========================================================================
``model_class(model_config)``       the transformers auto class (classification head, or the causal LM)
``check(encoder, task, config)``    pre-flight: what the kind cannot honour, as a one-line DataError
``features(...)``, ``collator``     a split encoded into features, and its batches
``loss(model, batch)``              the training loss of one batch
``eval_set(...)``, ``evaluate``     the server's test set and its metrics (accuracy, macro_f1, loss, ...)
``probe_batch(eval_set)``           the gradient-error probe's batch (its loss: ``loss``)
``sample(model, eval_set)``         decoders: a greedy answer to a fixed prompt (None elsewhere)
==================================  ========================================================================

Built in (:mod:`.kinds`):

* ``classification`` — encoders and ViTs: a classification head, ``model(**batch).loss``, accuracy + macro-F1;
* ``instruction`` — decoders: every labelled example becomes prompt -> answer with the tokenizer's chat
  template (``fedpft_prompt_template``, ``fedpft_label_answers``); the loss covers the answer tokens only,
  with the output projection computed only where a label is predicted; evaluation is lm-eval's
  multiple-choice rule over the label answers -> accuracy + macro-F1;
* ``language_modeling`` — decoders: the task's texts, labels = input ids; evaluation is held-out
  perplexity (``accuracy`` is next-token top-1 accuracy there).

``auto`` resolves to ``instruction`` for decoders (:func:`fedpft_algo.core.arch.is_decoder`) and to
``classification`` for everything else; a decoder given ``classification``, or an encoder/ViT given a
decoder kind, is a :class:`~fedpft_algo.errors.ConfigError` (exit 2 in pre-flight).

Imports: core, data, models (the auto class), config, errors. Never fedml, runtime, launch or bench.
"""
from __future__ import annotations

from typing import Dict, Tuple

from ..errors import ConfigError
from .base import EVAL_KEYS, TaskKind

__all__ = ["TaskKind", "EVAL_KEYS", "get_task_kind", "known_task_kinds", "register_task_kind", "resolve_task_kind"]

_REGISTRY: Dict[str, TaskKind] = {}


def _registry() -> Dict[str, TaskKind]:
    if not _REGISTRY:
        from .kinds import BUILTIN

        for kind in BUILTIN:
            _REGISTRY.setdefault(kind.name, kind)
    return _REGISTRY


def register_task_kind(kind: TaskKind, *, overwrite: bool = False) -> None:
    if kind.name in _registry() and not overwrite:
        raise ValueError(f"task kind {kind.name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[kind.name] = kind


def known_task_kinds() -> Tuple[str, ...]:
    return tuple(_registry())


def get_task_kind(name: str) -> TaskKind:
    try:
        return _registry()[name]
    except KeyError:
        raise ConfigError(f"fedpft_task_kind={name!r} is not allowed: expected one of auto, "
                          f"{', '.join(known_task_kinds())}") from None


def resolve_task_kind(requested: str, model_config) -> TaskKind:
    """The kind a run uses: ``requested`` (``auto``: instruction for decoders, classification otherwise),
    checked against the model (:class:`ConfigError` on a mismatch)."""
    from ..core.arch import is_decoder

    decoder = is_decoder(model_config)
    if requested == "auto":
        return get_task_kind("instruction" if decoder else "classification")
    kind = get_task_kind(requested)
    if kind.causal_lm != decoder:
        what = "a decoder (causal LM)" if decoder else "not a decoder (an encoder or image model)"
        allowed = [k for k in known_task_kinds() if get_task_kind(k).causal_lm == decoder]
        raise ConfigError(f"fedpft_task_kind={requested!r} is not allowed: model type {model_config.model_type} is "
                          f"{what}; expected auto or one of {', '.join(allowed)}")
    return kind
