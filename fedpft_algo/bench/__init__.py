"""``fedpft bench`` and the measurements around it: the suite's spec, the runner, the report, the
client-cost probe, ``fedpft compress`` and the small ViT pre-training.

Imports: launch, methods, core, data, models, rundir, config, errors, files, compat. Never runtime: a
cell runs as participant processes started by module name (the bench may list methods' names).
"""
