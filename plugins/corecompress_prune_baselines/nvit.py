"""Global structural saliency in the manner of NViT (Yang et al., CVPR 2023, "Global Vision
Transformer Pruning with Hessian-Aware Saliency") and SAViT (Zheng et al., NeurIPS 2022, "SAViT:
Structure-Aware Vision Transformer Pruning via Collaborative Optimization").

Written from the papers' description only (NViT's code is non-commercial; none of it is used).

Both rank every structure of every block against each other with one threshold. The saliency of a
unit is the Hessian-aware second-order term of removing it: with the Fisher approximation of the
Hessian, ``½ Δwᵀ H Δw ≈ ½ (Σ w·∂L/∂w)²`` for ``Δw = −w`` over the unit's parameters (the first-order
term vanishes in expectation at a trained optimum). Here it is ``(Σ w·g)²`` per calibration batch
(mini-batch gradients), averaged over batches. To make units of different blocks and stages
comparable, each saliency is divided by the cost the unit removes (``normalize``):

- ``params`` (default): the number of parameters the unit deletes (all its slices);
- ``macs``: the multiply-accumulates of its Linear/Conv weight slices per sample, measured with a
  forward pass (tokens / spatial positions per layer) — attention's q·k and attn·v products are not
  counted; units without such weights fall back to their parameter count;
- ``none``: raw saliency.

Use it with ``prune.scope: global`` (one ranking over all blocks, per kind); with ``local`` scope
the normalisation changes nothing (every unit of a group has the same cost) and the importance is
the squared Taylor criterion — a warning says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from corecompress.pruning.groups import PrunableGroup

from corecompress_prune_baselines.objective import (LOSS_HELP, LossName, calibration, context_log, forward,
                                              make_objective)
from corecompress_prune_baselines.taylor import warn_if_all_zero
from corecompress_prune_baselines.units import parameter_slices, scoring_mode, taylor_terms, unit_parameter_count, unit_view

Normalize = Literal["params", "macs", "none"]


@dataclass
class NViTOptions:
    normalize: Normalize = field(default="params", metadata={
        "help": "divide each unit's saliency by the parameters (params) or MACs (macs) it removes, or not (none)"})
    loss: LossName = field(default="auto", metadata={"help": LOSS_HELP})


class NViTImportance:
    """Hessian-aware (Fisher) saliency per unit, normalised by its cost — for global pruning."""

    #: saliencies estimate the loss change of removing a unit, in one unit across all blocks (NViT)
    comparable_across_groups = True


    def __init__(self, options: NViTOptions) -> None:
        self.options = options

    def score(self, model: nn.Module, groups: list[PrunableGroup], context: Any) -> dict[str, torch.Tensor]:
        scope = getattr(getattr(getattr(context, "recipe", None), "prune", None), "scope", None)
        if scope == "local":
            context_log(context).warning("importance nvit ranks units across blocks; with prune.scope: local its "
                                         "normalisation has no effect — use prune.scope: global")
        batches = calibration(context)
        objective = make_objective(self.options.loss, model, context, batches)
        saliency = taylor_terms(model, groups, batches, objective, lambda signed, _absolute: signed.pow(2))
        warn_if_all_zero(saliency, context, objective.name)
        costs = self.costs(model, [g for g in groups if g.name in saliency], batches[0])
        return {name: (s / costs[name]).float() for name, s in saliency.items()}

    def costs(self, model: nn.Module, groups: list[PrunableGroup], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per group, the (size,) cost of each unit under ``normalize``."""
        if self.options.normalize == "none":
            return {g.name: torch.ones(g.size) for g in groups}
        params = {g.name: unit_parameter_count(model, g) for g in groups}
        if self.options.normalize == "params":
            return params
        positions = layer_positions(model, batch)
        costs = {}
        for g in groups:
            macs = 0.0
            for sl, p in parameter_slices(model, g):
                module_path, _, attr = sl.tensor.rpartition(".")
                if attr == "weight" and module_path in positions:
                    macs += unit_view(p.detach(), sl, g.size).shape[1] * positions[module_path]
            costs[g.name] = torch.full((g.size,), macs) if macs > 0 else params[g.name]
        return costs


def layer_positions(model: nn.Module, batch: dict[str, Any]) -> dict[str, float]:
    """Per Linear/Conv module, how many output positions (tokens, pixels) one sample makes it compute."""
    samples = int(batch["image"].shape[0])
    found: dict[str, float] = {}

    def counter(name: str, width: int) -> Any:
        def hook(_module: nn.Module, _args: Any, out: torch.Tensor) -> None:
            found[name] = found.get(name, 0.0) + out.numel() / (width * samples)
        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(counter(name, module.out_features)))
        elif isinstance(module, nn.modules.conv._ConvNd):
            handles.append(module.register_forward_hook(counter(name, module.out_channels)))
    try:
        with scoring_mode(model), torch.no_grad():
            forward(model, batch)
    finally:
        for h in handles:
            h.remove()
    return found
