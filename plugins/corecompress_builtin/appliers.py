"""Plan appliers: ``mask`` (soft, same size, kept zero through training) and ``physical`` (smaller)."""
from __future__ import annotations

from typing import Any

import torch

from corecompress.pruning.groups import PrunableGroup
from corecompress.pruning.masking import apply_masks
from corecompress.pruning.physical import apply_physical
from corecompress.pruning.plan import PruningPlan


class MaskApplier:
    """Zero the removed units and re-zero them after every optimizer step (the FACES reference behaviour)."""

    def apply(self, model: torch.nn.Module, groups: list[PrunableGroup], plan: PruningPlan, context: Any) -> torch.nn.Module:
        masks = apply_masks(model, groups, plan)
        if context is not None:
            context.masks = masks
        return model


class PhysicalApplier:
    """Remove the units: sliced tensors, fixed layer sizes, gathered inputs; then fire ``after_physical_prune``."""

    def apply(self, model: torch.nn.Module, groups: list[PrunableGroup], plan: PruningPlan, context: Any) -> torch.nn.Module:
        model = apply_physical(model, groups, plan)
        if context is not None:
            context.masks = None
            context.hook.after_physical_prune(run=context, model=model, plan=plan)
        return model


def register(register: Any) -> None:
    register("mask", MaskApplier, description="soft masks: same size and speed, reversible")
    register("physical", PhysicalApplier, description="physical removal: a really smaller, faster model")


def reapply_masks(run: Any, model: torch.nn.Module) -> None:
    masks = getattr(run, "masks", None)
    if masks is not None:
        masks.apply(model)
