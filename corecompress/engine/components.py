"""Small helpers any component may use with the run context: a seeded generator, the run's device.

Nothing here is face-specific; plugins import these from the core rather than from one another.
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["context_device", "seeded_generator"]


def seeded_generator(ctx: Any, salt: int) -> torch.Generator:
    """A CPU generator seeded by the recipe seed and a per-component salt (reproducible initialisation).

    The seed is ``recipe.seed · 1 000 033 + salt`` (seed 0 without a recipe), so each component that picks
    its own salt draws from its own stream whatever else consumed the global random stream.
    """
    recipe = getattr(ctx, "recipe", None)
    seed = int(getattr(recipe, "seed", 0) or 0)
    return torch.Generator().manual_seed(seed * 1_000_033 + salt)


def context_device(ctx: Any) -> torch.device:
    """The run's device (``ctx.device``), the CPU when the context has none."""
    return torch.device(getattr(ctx, "device", None) or "cpu")
