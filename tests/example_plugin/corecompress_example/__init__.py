"""An example third-party plugin: the ``example_norm_ratio`` importance and the ``example_cosine_kd``
distillation loss.

Deliberately simple criteria whose point is to prove that a package installed separately reaches the
registry through the ``corecompress`` entry-point group, can be named in a recipe, and is tested the way
any plugin is (``tests/`` beside this package; docs/plugins.md walks through it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from corecompress import hookimpl


@dataclass
class NormRatioOptions:
    power: float = field(default=1.0, metadata={"help": "raise the ratio to this power"})


class NormRatio:
    """Each unit's L2 weight norm over the group's mean norm (higher = keep)."""

    def __init__(self, options: NormRatioOptions) -> None:
        self.options = options

    def score(self, model: torch.nn.Module, groups: list, context: Any) -> dict[str, torch.Tensor]:
        out = {}
        for g in groups:  # g.weight_slices(model): one (units, rest) tensor per weight the group cuts into
            norms = torch.sqrt(sum(part.pow(2).sum(1) for part in g.weight_slices(model)))
            out[g.name] = (norms / norms.mean().clamp_min(1e-12)) ** self.options.power
        return out


@dataclass
class CosineKDOptions:
    weight: float = field(default=1.0, metadata={"help": "multiplies 1 − cos(student, teacher)"})


class CosineKD(torch.nn.Module):
    """1 − cosine similarity between the student's and the teacher's outputs, averaged over the batch."""

    def __init__(self, options: CosineKDOptions) -> None:
        super().__init__()
        self.options = options

    def forward(self, outputs: torch.Tensor, batch: dict[str, Any], teacher_outputs: Any = None) -> dict[str, Any]:
        distance = 1 - F.cosine_similarity(outputs.float(), teacher_outputs.float(), dim=1).mean()
        return {"loss": self.options.weight * distance, "cosine_distance": distance.detach()}


@hookimpl
def register_importances(register: Any) -> None:
    register("example_norm_ratio", NormRatio, NormRatioOptions, description="L2 norm / group mean (example plugin)")


@hookimpl
def register_losses(register: Any) -> None:
    register("example_cosine_kd", CosineKD, CosineKDOptions, needs={"teacher"},
             description="1 − cos(student, teacher) (example plugin)")
