"""``fedpft run`` outside the participants: resolve and check a run plan, start and watch the participant
processes, collect the results.

Imports: config, errors, files, rundir, and launch itself; data, models and core.arch only inside
functions (the pre-flight loads). Never runtime (participants are started by module name), and no torch,
transformers, peft or fedml at import time, so that the command line answers at once.
"""
