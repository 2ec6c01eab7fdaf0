"""First-order Taylor importance (Molchanov et al., CVPR 2019, "Importance Estimation for Neural
Network Pruning").

Zeroing a unit changes the loss by about ``−Σ w·∂L/∂w`` summed over the unit's parameters. Here a
unit's parameters are every parameter index its group covers (for a head: its q/k/v rows and biases
and its proj columns; for a filter: conv rows, BatchNorm γ/β and the next conv's columns), i.e. the
paper's group contribution with all coupled tensors of the unit. Per calibration batch, per unit:

- ``group_abs_sum`` (default): ``|Σ w·g|`` — the absolute first-order change of removing the unit.
- ``group_squared``: ``(Σ w·g)²`` — the paper's own group criterion (its Eq. 8).
- ``sum_abs``: ``Σ |w·g|`` — per-weight contributions summed without cancellation.

The per-batch values are averaged over the calibration batches (the paper averages per-minibatch
importances). Scored in eval mode with the loss of :mod:`corecompress_prune_baselines.objective`; the
model's modes, ``requires_grad`` flags and ``.grad`` are left exactly as they were.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from corecompress.pruning.groups import PrunableGroup

from corecompress_prune_baselines.objective import LOSS_HELP, LossName, calibration, context_log, make_objective
from corecompress_prune_baselines.units import taylor_terms

Variant = Literal["group_abs_sum", "group_squared", "sum_abs"]

REDUCERS = {
    "group_abs_sum": lambda signed, absolute: signed.abs(),
    "group_squared": lambda signed, absolute: signed.pow(2),
    "sum_abs": lambda signed, absolute: absolute,
}


@dataclass
class TaylorOptions:
    variant: Variant = field(default="group_abs_sum", metadata={
        "help": "group_abs_sum: |Σ w·g| | group_squared: (Σ w·g)² (Molchanov Eq. 8) | sum_abs: Σ |w·g|"})
    loss: LossName = field(default="auto", metadata={"help": LOSS_HELP})


class TaylorImportance:
    """Molchanov et al. 2019 first-order Taylor importance of each unit (higher = keep)."""


    def __init__(self, options: TaylorOptions) -> None:
        self.options = options

    def score(self, model: torch.nn.Module, groups: list[PrunableGroup], context: Any) -> dict[str, torch.Tensor]:
        batches = calibration(context)
        objective = make_objective(self.options.loss, model, context, batches)
        scores = taylor_terms(model, groups, batches, objective, REDUCERS[self.options.variant])
        warn_if_all_zero(scores, context, objective.name)
        return scores


def warn_if_all_zero(scores: dict[str, torch.Tensor], context: Any, loss: str) -> None:
    """Zero gradients everywhere mean the loss sits at its minimum (e.g. a teacher equal to the model)."""
    if scores and all(float(s.abs().max()) == 0.0 for s in scores.values()):
        context_log(context).warning(
            "gradient importance: every score is 0 (the %s loss has zero gradient here); the plan will "
            "keep units by index — choose another prune.importance.loss", loss)
