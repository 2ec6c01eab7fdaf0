"""Per-unit views of a group's parameters, and gradient passes that leave the model as it was.

Shared by the Taylor-family baselines (``taylor``, ``nvit``) and ViT-Slim's soft masks. A unit's
parameters are exactly the indices its group's :class:`~corecompress.pruning.groups.Slice` s cover,
so "removing a unit" here is the same thing soft masking and physical removal do.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from corecompress.pruning.groups import PrunableGroup, Slice

from corecompress_prune_baselines.objective import Objective, eval_mode, forward


def unit_view(tensor: torch.Tensor, sl: Slice, size: int) -> torch.Tensor:
    """The (size, rest) view of ``tensor`` restricted to ``sl``, one row per unit (all offsets, width)."""
    moved = tensor.movedim(sl.dim, 0)
    parts = [moved[o:o + size * sl.width] for o in sl.offsets]
    stacked = torch.stack(parts, 0).reshape(len(sl.offsets), size, sl.width, -1)
    return stacked.permute(1, 0, 2, 3).reshape(size, -1)


def parameter_slices(model: nn.Module, group: PrunableGroup) -> list[tuple[Slice, nn.Parameter]]:
    """The group's slices that index into parameters (buffers such as running statistics are skipped)."""
    params = dict(model.named_parameters())
    return [(sl, params[sl.tensor]) for sl in group.slices if sl.tensor in params]


def unit_parameter_count(model: nn.Module, group: PrunableGroup) -> torch.Tensor:
    """Per unit, how many parameters removing it deletes (the same for every unit of a group)."""
    count = sum(unit_view(p.detach(), sl, group.size).shape[1] for sl, p in parameter_slices(model, group))
    return torch.full((group.size,), float(count))


@contextmanager
def scoring_mode(model: nn.Module, trainable: set[nn.Parameter] | None = None) -> Iterator[None]:
    """Eval mode, ``requires_grad`` only on ``trainable``; afterwards every module's mode, every
    parameter's ``requires_grad`` and ``.grad`` are exactly what they were (nothing in the model changes)."""
    flags = {p: (p.requires_grad, p.grad) for p in model.parameters()}
    keep = trainable or set()
    try:
        with eval_mode(model):
            for p in flags:
                p.requires_grad_(p in keep)
                p.grad = None
            yield
    finally:
        for p, (flag, grad) in flags.items():
            p.requires_grad_(flag)
            p.grad = grad


def taylor_terms(model: nn.Module, groups: list[PrunableGroup], batches: list[dict[str, Any]],
                 objective: Objective, reduce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 ) -> dict[str, torch.Tensor]:
    """Mean over batches of ``reduce(S, A)`` per unit, where for one batch and one unit
    ``S = Σ w·∂L/∂w`` and ``A = Σ |w·∂L/∂w|`` run over every parameter index of the unit.

    ``S`` is the first-order Taylor estimate of the loss change when the unit is zeroed (up to sign).
    Gradients come from ``torch.autograd.grad``: no ``.grad`` is written.
    """
    pairs = {g.name: parameter_slices(model, g) for g in groups}
    needed = list({id(p): p for ps in pairs.values() for _, p in ps}.values())
    index = {id(p): i for i, p in enumerate(needed)}
    totals: dict[str, torch.Tensor] = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups if pairs[g.name]}
    with scoring_mode(model, set(needed)):
        for b, batch in enumerate(batches):
            loss = objective(forward(model, batch), batch, b)
            grads = torch.autograd.grad(loss, needed, allow_unused=True)
            for g in groups:
                if not pairs[g.name]:
                    continue
                signed = torch.zeros(g.size, dtype=torch.float64, device=loss.device)
                absolute = torch.zeros_like(signed)
                for sl, p in pairs[g.name]:
                    grad = grads[index[id(p)]]
                    if grad is None:
                        continue
                    prod = unit_view(p.detach() * grad, sl, g.size).double()
                    signed += prod.sum(1)
                    absolute += prod.abs().sum(1)
                totals[g.name] += reduce(signed, absolute).cpu()
    return {name: (t / len(batches)).float() for name, t in totals.items()}
