"""Stand-in participants for the launcher's process tests, started as ``python -m fake_participant``.

The launcher starts participants by module name in fresh processes: put :data:`HELPERS_DIR` on their
``PYTHONPATH`` (:func:`pythonpath`) and set ``launcher.PARTICIPANT_MODULE`` to the helper's name.
Inside the test process import them as ``tests.helpers.fake_participant``.
"""
import os
from pathlib import Path

HELPERS_DIR = Path(__file__).resolve().parent
REPO_DIR = HELPERS_DIR.parents[1]
CONFIG_DIR = REPO_DIR / "fedml_config"


def pythonpath() -> str:
    """``PYTHONPATH`` for a participant process: the helpers first, then what this process was given."""
    return os.pathsep.join(p for p in (str(HELPERS_DIR), os.environ.get("PYTHONPATH", "")) if p)


def tiny_causal_lm(vocab_size: int, num_layers: int, max_positions: int):
    """A config-built LLaMA-style decoder (GQA: 4 query heads, 2 key/value heads; gated FFN of 64), seeded."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", vocab_size=vocab_size, hidden_size=32, num_hidden_layers=num_layers,
                                  num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                  max_position_embeddings=max_positions, pad_token_id=0)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()
