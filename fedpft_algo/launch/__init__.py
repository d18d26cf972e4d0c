"""``fedpft run``'s local launcher: plan a run, check it, start its participants, watch them, stop them.

* :mod:`.plan`: the yaml resolved, overridden (``--set``), validated and completed (:class:`RunPlan`);
* :mod:`.preflight`: the data set and the model loaded once before anything starts;
* :mod:`.addresses`: GRPC address files and free ports;
* :mod:`.supervisor`: :func:`launch` runs a plan, with timeouts, and names the participant that failed;
* :mod:`.processes`: starting and stopping process sessions.

The progress lines and ``metrics.csv`` / ``metrics.json`` / ``accuracy.png`` are :mod:`fedpft_algo.rundir.results`.

Imports: config, errors, files, rundir, and launch itself; data, models and core.arch only inside
functions (the pre-flight loads). Never runtime (participants are started by module name), and no torch,
transformers, peft or fedml at import time, so that the command line answers at once.
"""
from .plan import RunPlan, parse_override, plan_config, plan_resume, plan_run, set_key
from .preflight import preflight
from .processes import raise_on_sigterm
from .supervisor import RunFailed, launch

__all__ = ["RunPlan", "RunFailed", "launch", "parse_override", "plan_config", "plan_resume", "plan_run", "preflight",
           "raise_on_sigterm", "set_key"]
