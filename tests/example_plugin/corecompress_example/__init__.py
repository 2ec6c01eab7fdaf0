"""An example third-party plugin: the ``example_norm_ratio`` importance.

Scores each unit by its L2 weight norm divided by the group's mean norm — a deliberately simple
criterion whose point is to prove that a package installed separately reaches the registry
through the ``corecompress`` entry-point group and can be named in a recipe.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from corecompress import hookimpl


@dataclass
class NormRatioOptions:
    power: float = field(default=1.0, metadata={"help": "raise the ratio to this power"})


class NormRatio:
    needs: frozenset[str] = frozenset()

    def __init__(self, options: NormRatioOptions) -> None:
        self.options = options

    def score(self, model: torch.nn.Module, groups: list, context: Any) -> dict[str, torch.Tensor]:
        out = {}
        for g in groups:
            norms = torch.sqrt(sum(part.pow(2).sum(1) for part in g.weight_slices(model)))
            out[g.name] = (norms / norms.mean().clamp_min(1e-12)) ** self.options.power
        return out


@hookimpl
def register_importances(register: Any) -> None:
    register("example_norm_ratio", NormRatio, NormRatioOptions, description="L2 norm / group mean (example plugin)")
