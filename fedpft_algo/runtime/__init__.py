"""What runs inside a FedML participant process: the run settings read from FedML's ``args``, the payload,
``FedPFTTrainer`` (client) and ``FedPFTAggregator`` (server), the hooks that make every FedML path call
them, FedML's own baselines, and the participant's entry point.

Imports: everything below it (errors, files, compat, config, core, methods, data, models, rundir) and
fedml. Never launch, bench or cli: those start these modules by name, in processes of their own.
"""
