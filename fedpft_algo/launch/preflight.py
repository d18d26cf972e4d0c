"""Pre-flight: load what the participants will load, in the launcher, before any process starts.

A data or model mistake (a task that does not load, a model that is missing or fails its hash
check, retained layers the model does not have, a split the data cannot make) is then a
one-line error, and no run directory is left behind. The only module of
:mod:`fedpft_algo.launch` that imports data and model code, and only when it runs.
"""
from __future__ import annotations

from ..settings import RunSettings
from . import limits
from .plan import RunPlan


def preflight(plan: RunPlan) -> "limits.Preflight":
    """Load the data set, the FM's config (hash-checked), its layer layout, the client split and the public
    set, and check every value they cannot honour (:mod:`.limits`). Returns what was loaded.
    Raises :class:`~fedpft_algo.errors.FedPFTError`."""
    from ..core.arch import get_arch, num_layers
    from ..data.partition import partition
    from ..data.tasks import load_task
    from ..models import load_model_config

    limits.check_keys(plan)
    devices = limits.check_devices(plan)
    settings = RunSettings.from_sections(plan.config)
    task = load_task(settings.dataset, **settings.task_args())
    model_config = load_model_config(settings.model, task.num_labels, settings.cache_dir)
    get_arch(model_config.model_type)
    settings.fedpft.resolve_retained_layers(num_layers(model_config))
    partition(task.train_labels, settings.client_num_in_total, settings.partition_method, settings.partition_alpha,
              settings.seed)
    return limits.check_loaded(plan, settings, task, model_config, devices)
