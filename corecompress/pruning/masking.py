"""Soft masks: zero what a plan removes and keep it zero through training.

The reference FACES code re-zeroes the pruned columns after every optimizer step; this module does
the same (``MaskSet.apply`` is called from the ``after_optimizer_step`` hook). The model keeps its
size: a masked model is never smaller or faster, and the reports say so.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from corecompress.pruning.groups import PrunableGroup, get_tensor
from corecompress.pruning.plan import PruningPlan


def removed_units(group: PrunableGroup, keep: list[int]) -> torch.Tensor:
    mask = torch.ones(group.size, dtype=torch.bool)
    mask[torch.tensor(keep, dtype=torch.long)] = False
    return torch.nonzero(mask).flatten()


@dataclass
class MaskSet:
    """Per tensor name, a multiplicative 0/1 mask of the tensor's shape."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    @torch.no_grad()
    def apply(self, model: torch.nn.Module) -> None:
        for name, mask in self.masks.items():
            t = get_tensor(model, name)
            t.mul_(mask.to(device=t.device, dtype=t.dtype))

    def nonzero_fraction(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        return float(sum(m.sum() for m in self.masks.values()) / total) if total else 1.0


def build_masks(model: torch.nn.Module, groups: list[PrunableGroup], plan: PruningPlan) -> MaskSet:
    plan.check(groups)
    masks: dict[str, torch.Tensor] = {}
    params = dict(model.named_parameters())
    for g in groups:
        if g.name not in plan.groups:
            continue
        dropped = removed_units(g, plan.groups[g.name].keep)
        if dropped.numel() == 0:
            continue
        for sl in g.slices:
            if sl.tensor not in params:
                continue  # buffers (running statistics) are not trained; zero weights suffice
            t = params[sl.tensor]
            mask = masks.setdefault(sl.tensor, torch.ones_like(t, device="cpu"))
            mask.index_fill_(sl.dim, sl.indices(dropped), 0.0)
    return MaskSet(masks)


def apply_masks(model: torch.nn.Module, groups: list[PrunableGroup], plan: PruningPlan) -> MaskSet:
    """Zero the removed units now and return the masks to re-apply after each optimizer step."""
    masks = build_masks(model, groups, plan)
    masks.apply(model)
    return masks
