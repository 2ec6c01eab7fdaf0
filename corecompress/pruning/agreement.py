"""Masked ≡ physical: one plan applied both ways to copies of a model, and how far their outputs differ.

Soft masks zero what a plan removes; physical removal deletes it. Both come from the same group
data, so on any input the two models compute the same function (up to float rounding) — the
invariant every adapter's groups must keep (Torch-Pruning's DepGraph, Fang et al., CVPR 2023,
checks its groups the same way: the pruned model must still run).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from corecompress.pruning.groups import PrunableGroup
from corecompress.pruning.masking import apply_masks
from corecompress.pruning.physical import apply_physical
from corecompress.pruning.plan import PruningPlan


def masked_and_physical(model: nn.Module, groups: list[PrunableGroup], plan: PruningPlan) -> tuple[nn.Module, nn.Module]:
    """Two copies of ``model``: one with the plan's units masked to zero, one with them removed."""
    masked = copy.deepcopy(model)
    apply_masks(masked, groups, plan)
    return masked, apply_physical(copy.deepcopy(model), groups, plan)


def relative_error(expected: torch.Tensor, got: torch.Tensor) -> float:
    """max |got − expected| / max |expected| (infinite when the shapes differ)."""
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return float("inf")
    scale = float(expected.detach().abs().max().clamp_min(1e-30))
    return float((got.detach() - expected.detach()).abs().max()) / scale


@torch.no_grad()
def masked_physical_error(model: nn.Module, groups: list[PrunableGroup], plan: PruningPlan,
                          x: torch.Tensor) -> float:
    """:func:`relative_error` of the physically pruned model's output against the masked one's on ``x``
    (both in eval mode)."""
    masked, physical = masked_and_physical(model, groups, plan)
    return relative_error(masked.eval()(x), physical.eval()(x))
