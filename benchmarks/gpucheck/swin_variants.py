"""The SwinFace models sections (a) and (c) compare: dense, FACES 0.5 physical, and heads + MLP neurons
+ FACES channels at 50 % of the parameters, each also with ``round_to: 8``. Built once per process."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from structured_speed import prune_to_budget, structured_plan, structured_scores
from torch import nn

from corecompress.pruning import make_plan
from corecompress.pruning.groups import PrunableGroup
from corecompress.pruning.physical import apply_physical
from corecompress.pruning.plan import PruningPlan

ROUND_TO = 8
PARAMETER_TARGET = 0.5
FACES_SPARSITY = 0.5


@dataclass
class SwinVariants:
    spec: Any  # the swinface model adapter
    dense: nn.Module
    models: dict[str, nn.Module] = field(default_factory=dict)  # name → physically pruned model (dense first)
    plans: dict[str, tuple[list[PrunableGroup], PruningPlan]] = field(default_factory=dict)
    sparsity: dict[str, float] = field(default_factory=dict)


_BUILT: dict[str, SwinVariants] = {}


def _scatter_norms(model: nn.Module, seed: int) -> None:
    """Seeded random LayerNorm affines (fresh ones are all 1 and 0, which would make FACES keep the first
    channels of every group): the kept units are then scattered, as in a trained model."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm) and module.weight is not None:
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=gen))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))


def swin_variants(registry: Any, preset: str, iterations: int) -> SwinVariants:
    """The five models on the CPU, in eval mode (cached: sections (a) and (c) share them); ``iterations``
    of the bisection for the 50 % parameter budget."""
    if preset in _BUILT:
        return _BUILT[preset]
    comp = registry.get("model", "swinface")
    spec = comp.create(comp.parse({"preset": preset}, "model"))
    torch.manual_seed(0)
    dense = spec.build().eval()
    _scatter_norms(dense, seed=0)
    built = SwinVariants(spec, dense, {"dense": dense})
    faces = registry.get("importance", "faces")
    channels = spec.prunable_groups(dense, ("channels",))
    faces_scores = faces.create(faces.parse({}, "importance")).score(dense, channels, None)
    structured = structured_scores(registry, spec, dense)
    for round_to in (1, ROUND_TO):
        suffix = f"_r{round_to}" if round_to > 1 else ""
        plan = make_plan(faces_scores, channels, FACES_SPARSITY, round_to=round_to)
        name = f"faces_{FACES_SPARSITY}{suffix}"
        built.models[name] = apply_physical(copy.deepcopy(dense), channels, plan).eval()
        built.plans[name], built.sparsity[name] = (channels, plan), FACES_SPARSITY
        name = f"hnc_{int(100 * PARAMETER_TARGET)}pct{suffix}"
        model, sparsity = prune_to_budget(spec, dense, structured, PARAMETER_TARGET, round_to, iterations)
        built.models[name], built.sparsity[name] = model.eval(), sparsity
        built.plans[name] = structured_plan(spec, dense, structured, sparsity, round_to)
    _BUILT[preset] = built
    return built
