"""Per-round reseeding of a participant's randomness (see :meth:`RunSettings.round_seed`)."""
from __future__ import annotations

from typing import Any

import torch


def reseed_(seed: int, loader: Any = None) -> None:
    """Seed torch's global RNG and, if it shuffles with a generator of its own, ``loader``'s order."""
    torch.manual_seed(seed)
    generator = getattr(loader, "generator", None)
    if generator is not None:
        generator.manual_seed(seed)
