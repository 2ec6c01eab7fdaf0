"""What a pruning plan costs, before anything is pruned: parameters, MACs, predicted latency.

The budget planner (:mod:`corecompress.pruning.budget`) compares many candidate plans, so each cost
model answers ``cost(plan)`` for the whole plan — interactions included (a qkv weight loses rows to
head pruning and columns to FACES channel pruning at once) — without touching the real model:

- :class:`ParameterCost`: exact and instant — every tensor a group slices loses the sliced rows or
  columns; the stored parameter count of the physically pruned model (what ``count_parameters`` says).
- :class:`MacCost`: exact — the plan is applied physically to a copy of the model on PyTorch's
  ``meta`` device (shapes only, no memory, no arithmetic) and counted with FlopCounterMode, as the
  ``efficiency`` evaluator counts (attention products included).
- latency: :class:`corecompress.pruning.cost_table.LatencyCost`, from measured per-block tables.
"""
from __future__ import annotations

import copy
import math
from typing import Protocol

import torch
from torch import nn

from corecompress.pruning.groups import PrunableGroup
from corecompress.pruning.physical import apply_physical
from corecompress.pruning.plan import PruningPlan


class PlanCost(Protocol):
    """A cost model: ``dense`` is the unpruned model's cost, ``__call__(plan)`` a plan's, same unit."""

    dense: float

    def __call__(self, plan: PruningPlan) -> float: ...


class ParameterCost:
    """Stored parameters after physical removal of ``plan`` (slices of buffers do not count)."""

    def __init__(self, model: nn.Module, groups: list[PrunableGroup]) -> None:
        self.shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
        self.groups = groups
        self.dense = float(sum(math.prod(s) for s in self.shapes.values()))

    def __call__(self, plan: PruningPlan) -> float:
        lengths: dict[str, list[int]] = {}
        for g in self.groups:
            gp = plan.groups.get(g.name)
            if gp is None or gp.removed == 0:
                continue
            for sl in g.slices:
                if sl.tensor in self.shapes:
                    dims = lengths.setdefault(sl.tensor, list(self.shapes[sl.tensor]))
                    dims[sl.dim] -= gp.removed * sl.width * len(sl.offsets)
        return self.dense - sum(math.prod(self.shapes[t]) - math.prod(dims) for t, dims in lengths.items())


class MacCost:
    """MACs per image after physical removal of ``plan``, counted on a shapes-only (meta) copy."""

    def __init__(self, model: nn.Module, groups: list[PrunableGroup], input_size: tuple[int, ...]) -> None:
        self.groups, self.input_size = groups, tuple(input_size)
        self.shapes_only = copy.deepcopy(model).to("meta")
        self.dense = self._count(self.shapes_only)

    def _count(self, model: nn.Module) -> float:
        from corecompress.tools.measure import count_macs

        return float(count_macs(model, example_input=torch.zeros(1, *self.input_size, device="meta")))

    def __call__(self, plan: PruningPlan) -> float:
        return self._count(apply_physical(copy.deepcopy(self.shapes_only), self.groups, plan))
