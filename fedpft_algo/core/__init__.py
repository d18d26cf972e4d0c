"""The algorithm as pure functions on PyTorch / Hugging Face models: the architecture registry, sub-FM
compression, layer- and neuron-level alignment, activation statistics, LoRA and the plug-in, aggregation,
differential privacy, evaluation and the gradient error.

Imports: errors, config, torch / transformers / peft, and core itself. Never fedml, data, models, methods,
rundir, runtime, launch or bench: this code runs the same in a FedML process, a test or a notebook.
"""
