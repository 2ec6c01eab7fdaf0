"""Generic importance criteria that work on any prunable group.

- ``l1`` / ``l2``: magnitude of each unit's weights over every weight slice of its group (for a
  FACES channel group this is exactly the L1 norm of the qkv/fc1 input column — the reference
  code's ``l1`` rule; for filters it is Li et al., ICLR 2017, "Pruning Filters for Efficient ConvNets").
- ``random``: uniform random scores from a seed (the sanity baseline every pruning paper needs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from corecompress.pruning.groups import PrunableGroup


@dataclass
class MagnitudeOptions:
    normalize: Literal["none", "mean"] = field(
        default="none", metadata={"help": "'mean' divides by the number of weights per unit (comparable across groups)"})


class Magnitude:
    """Group magnitude: Σ|w|^p over the unit's slices (p = 1 or 2)."""


    def __init__(self, p: int, options: MagnitudeOptions) -> None:
        self.p, self.options = p, options

    @property
    def comparable_across_groups(self) -> bool:
        """Per-weight means are comparable across groups; raw sums grow with the group's fan-in."""
        return self.options.normalize == "mean"

    def score(self, model: torch.nn.Module, groups: list[PrunableGroup], context: Any) -> dict[str, torch.Tensor]:
        scores = {}
        for g in groups:
            parts = g.weight_slices(model)
            per_unit = sum(part.abs().pow(self.p).sum(1) for part in parts)
            if self.options.normalize == "mean":
                per_unit = per_unit / sum(part.shape[1] for part in parts)
            scores[g.name] = per_unit.float()
        return scores


@dataclass
class RandomOptions:
    seed: int | None = field(default=None, metadata={"help": "default: the run's seed"})


class RandomImportance:
    """Uniform random scores (a baseline, not a method)."""


    def __init__(self, options: RandomOptions) -> None:
        self.options = options

    def score(self, model: torch.nn.Module, groups: list[PrunableGroup], context: Any) -> dict[str, torch.Tensor]:
        seed = self.options.seed if self.options.seed is not None else getattr(getattr(context, "recipe", None), "seed", 0)
        gen = torch.Generator().manual_seed(int(seed) + 1)
        return {g.name: torch.rand(g.size, generator=gen) for g in groups}


def register(register: Any) -> None:
    register("l1", lambda o: Magnitude(1, o), MagnitudeOptions, description="L1 magnitude of each unit's weights")
    register("l2", lambda o: Magnitude(2, o), MagnitudeOptions, description="L2 (squared) magnitude of each unit's weights")
    register("random", RandomImportance, RandomOptions, description="random scores (baseline)")
