"""The run directory: what a run writes (status, events, metrics, checkpoints) and how it is read back.

Imports: errors, files, safetensors / torch (checkpoint tensors), and rundir itself. Never fedml, runtime,
launch or bench: the launcher, the participants and the bench all read and write a run through it.
"""
