"""ViT-Slim soft-mask search (Chavan et al., CVPR 2022, "Vision Transformer Slimming:
Multi-Dimension Searching in Continuous Optimization Space").

One learnable scalar per unit of every group (initialised to 1) multiplies the unit's activation
during a short search on the calibration batches; the search minimises ``task loss + l1 · Σ|mask|``
with Adam, and the final ``|mask|`` values are the scores (the plan's sparsity then acts as the
budget threshold, locally or globally).

How a unit's activation is scaled without editing the model: a temporary
``torch.nn.utils.parametrize`` parametrization multiplies the *consumer* slices of the group — the
input columns (``dim=1``) of Linear/Conv weights, e.g. a head's proj columns, a neuron's fc2
column, a FACES channel's qkv/fc1 column, a filter's next-conv column. ``W[:, u]·m_u`` times ``x``
equals ``W`` times ``x`` with feature ``u`` scaled by ``m_u``, so this is exactly a soft mask on the
unit's activation. A group without such a slice has all its parameter slices scaled instead. The
parametrizations are removed afterwards and the original parameter objects are checked to be back
and unmodified.

The task loss is :mod:`corecompress_prune_baselines.objective`'s; with ``loss: auto`` and no logits and no
teacher it is ``teacher_cosine`` against the model's own unmasked outputs (keep the masked model
close to the original). The paper updates the weights jointly with the masks; here the weights are
frozen by default (``weight_lr: 0``) so scoring has no side effects; ``weight_lr > 0`` trains a
*copy* of the model's weights with the masks, and the model passed in is never changed.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from corecompress.pruning.groups import PrunableGroup, Slice

from corecompress_prune_baselines.objective import LOSS_HELP, LossName, calibration, forward, make_objective
from corecompress_prune_baselines.units import parameter_slices, scoring_mode


@dataclass
class ViTSlimOptions:
    search_steps: int = field(default=100, metadata={"help": "Adam steps of the mask search (cycling over batches)"})
    lr: float = field(default=0.01, metadata={"help": "Adam learning rate of the masks"})
    l1: float = field(default=1e-3, metadata={"help": "λ of the L1 budget term λ·Σ|mask|"})
    weight_lr: float = field(default=0.0, metadata={
        "help": "0: weights frozen (default); > 0: a copy of the weights is trained jointly at this lr (as in the paper)"})
    loss: LossName = field(default="auto", metadata={"help": LOSS_HELP})


class UnitGate(nn.Module):
    """Parametrization: multiply the indices of ``sl`` along its dim by the unit's mask value."""

    def __init__(self, mask: nn.Parameter, sl: Slice, size: int, length: int, ndim: int) -> None:
        super().__init__()
        self.shared = (mask,)  # a tuple, so the mask is not registered as a parameter of the model
        self.register_buffer("index", sl.indices(torch.arange(size)), persistent=False)
        self.register_buffer("unit", torch.arange(size).repeat_interleave(sl.width).repeat(len(sl.offsets)),
                             persistent=False)
        self.length, self.dim, self.ndim = length, sl.dim, ndim

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        values = self.shared[0][self.unit.to(weight.device)].to(weight.dtype)
        factor = torch.ones(self.length, dtype=weight.dtype, device=weight.device)
        factor = factor.scatter(0, self.index.to(weight.device), values)
        shape = [1] * self.ndim
        shape[self.dim] = self.length
        return weight * factor.reshape(shape)


def gate_slices(model: nn.Module, group: PrunableGroup) -> list[tuple[Slice, nn.Parameter]]:
    """The consumer input-column slices of the group (see the module docstring), else all its parameter slices."""
    pairs = parameter_slices(model, group)
    consumers = []
    for sl, p in pairs:
        module_path, _, attr = sl.tensor.rpartition(".")
        module = model.get_submodule(module_path) if module_path else model
        if attr == "weight" and sl.dim == 1 and isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            consumers.append((sl, p))
    return consumers or pairs


class ViTSlimImportance:
    """ViT-Slim: |soft mask| per unit after an L1-budgeted search on calibration data (higher = keep)."""


    def __init__(self, options: ViTSlimOptions) -> None:
        if options.search_steps < 1 or options.lr <= 0 or options.l1 < 0 or options.weight_lr < 0:
            raise ValueError("vit_slim: search_steps ≥ 1, lr > 0, l1 ≥ 0 and weight_lr ≥ 0 are required")
        self.options = options

    def score(self, model: nn.Module, groups: list[PrunableGroup], context: Any) -> dict[str, torch.Tensor]:
        batches = calibration(context)
        objective = make_objective(self.options.loss, model, context, batches, self_teacher=True)
        searched = copy.deepcopy(model) if self.options.weight_lr > 0 else model
        device = next(searched.parameters()).device
        weights = set(searched.parameters()) if self.options.weight_lr > 0 else set()
        masks = {g.name: nn.Parameter(torch.ones(g.size, device=device)) for g in groups if gate_slices(searched, g)}
        attached = attach_gates(searched, [g for g in groups if g.name in masks], masks)
        try:
            with scoring_mode(searched, weights):  # the masks are not model parameters: they keep requires_grad
                param_groups = [{"params": list(masks.values()), "lr": self.options.lr}]
                if weights:
                    param_groups.append({"params": [p for p in searched.parameters() if p in weights],
                                         "lr": self.options.weight_lr})
                optimizer = torch.optim.Adam(param_groups)
                for step in range(self.options.search_steps):
                    b = step % len(batches)
                    task = objective(forward(searched, batches[b]), batches[b], b)
                    budget = sum(m.abs().sum() for m in masks.values())
                    optimizer.zero_grad(set_to_none=True)
                    (task + self.options.l1 * budget).backward()
                    optimizer.step()
                for m in masks.values():
                    m.grad = None
        finally:
            detach_gates(searched, attached, check=searched is model)
        return {name: m.detach().abs().float().cpu() for name, m in masks.items()}


def attach_gates(model: nn.Module, groups: list[PrunableGroup], masks: dict[str, nn.Parameter],
                 ) -> list[tuple[nn.Module, str, nn.Parameter, int]]:
    """Register one :class:`UnitGate` per gated slice; returns what :func:`detach_gates` restores."""
    attached: dict[tuple[int, str], tuple[nn.Module, str, nn.Parameter]] = {}
    try:
        for g in groups:
            for sl, p in gate_slices(model, g):
                module_path, _, attr = sl.tensor.rpartition(".")
                module = model.get_submodule(module_path) if module_path else model
                attached.setdefault((id(module), attr), (module, attr, p))
                gate = UnitGate(masks[g.name], sl, g.size, p.shape[sl.dim], p.ndim)
                parametrize.register_parametrization(module, attr, gate, unsafe=True)
    except Exception:
        detach_gates(model, [(m, a, p, None) for m, a, p in attached.values()])
        raise
    # registering re-sets the original onto itself (same storage, version + 1): record versions now
    return [(m, a, p, p._version) for m, a, p in attached.values()]


def detach_gates(model: nn.Module, attached: list[tuple[nn.Module, str, nn.Parameter, int | None]],
                 check: bool = True) -> None:
    """Remove the gates; with ``check``, raise unless the original parameters are back, unmodified
    since the gates were attached (``check=False`` for the throw-away copy trained with ``weight_lr``)."""
    for module, attr, original, version in attached:
        if parametrize.is_parametrized(module, attr):
            parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
        current = getattr(module, attr)
        if check and (current is not original or (version is not None and original._version != version)):
            raise RuntimeError(f"vit_slim: {attr} of {type(module).__name__} was not restored unchanged after the search")
