"""The data layer: tasks, the server's public set, client partitions, loaders and FedML's data list.

* :func:`load_task` — a built-in task (:data:`BUILTIN_TASKS`), a data file/directory or ``hub:NAME``.
* :func:`load_public` — unlabelled server data for distillation, disjoint from the task.
* :func:`partition` — IID (``homo``) or Dirichlet label-skewed (``hetero``) client splits.
* :func:`build_fedml_dataset` — FedML's 8-item list of dict-batch DataLoaders.

Imports: errors, compat (partition.py's FedML helper), and data itself. Never core, models, runtime,
launch or bench: data knows nothing of the FM beyond the tokenizer or model configuration it is handed.
"""
from .loaders import (FedMLDataset, ImageCollator, ImageSpec, TextCollator, build_fedml_dataset, encode_inputs,
                      encode_text, image_spec, make_collator, make_loader, preprocess_images)
from .partition import partition, partition_records, partition_table
from .public import PUBLIC_CORPORA, check_disjoint, default_public_name, load_public
from .base import TaskData
from .tasks import BUILTIN_TASKS, load_task

__all__ = [
    "TaskData", "BUILTIN_TASKS", "load_task", "load_public", "default_public_name", "check_disjoint",
    "PUBLIC_CORPORA", "partition", "partition_table", "partition_records", "encode_text", "encode_inputs",
    "TextCollator", "ImageCollator", "ImageSpec", "image_spec", "preprocess_images", "make_collator", "make_loader",
    "build_fedml_dataset", "FedMLDataset",
]
