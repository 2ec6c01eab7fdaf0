"""Prune to a budget: the plan that keeps the most while costing at most a fraction of the dense model.

``prune.budget: {params: F}`` / ``{macs: F}`` / ``{latency: F}`` keeps at most F of the dense model's
parameters, MACs, or predicted latency (a measured per-block cost table,
:mod:`corecompress.pruning.cost_table`). The answer is a plan that meets it: ``achieved ≤ F``, and
``achieved ≥ F − tolerance`` unless the units are too coarse (heads, ``round_to``), which is reported.

How (the choice, and why): every candidate plan is costed *whole* by a cost model
(:mod:`corecompress.pruning.plan_cost`), and the search runs over one scalar, the removal level t:

- importances whose scores are comparable across groups (``comparable_across_groups``, e.g. FACES
  with ``normalize: block_mean``, magnitude with ``normalize: mean``, NViT's cost-normalised
  saliency) under ``prune.scope: global`` — plan(t) is the global allocation by importance
  (:func:`corecompress.pruning.plan.make_plan`, one ranking per kind over all blocks, with the
  ``min_keep_fraction`` floor);
- every other importance — plan(t) ranks within each group and removes the same fraction t of every
  group (FACES' uniform per-block rule, Lajić et al., ICT Express 2026).

plan(t) only shrinks as t grows and changes only where a kept count floor(n·(1 − t)) steps, so
bisection over those levels finds the least pruning that meets the budget in about a dozen cost
evaluations; then the units that the next-larger plan keeps are added back group by
group while the budget still holds (most important first, or in group order), which closes most of
the gap that a uniform step leaves. Why not a greedy per-unit allocation by importance per unit
cost: the cost of a unit is not its own — removing a channel saves less once heads are gone, and
latency is a measured, non-linear function of width — so a whole-plan cost is the only one that is
right for every combination of targets; importances that want cost-aware ranking normalise by cost
themselves (NViT divides by the parameters or MACs a unit removes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from corecompress.pruning.groups import PrunableGroup
from corecompress.pruning.plan import GroupPlan, PruningPlan, make_plan
from corecompress.pruning.plan_cost import PlanCost

#: The highest removal level tried (make_plan takes sparsities below 1; every group is at its floor).
MAX_LEVEL = 1.0 - 1e-9


class BudgetUnreachable(ValueError):
    """Even the most pruned plan allowed (floors, ``min_keep``) costs more than the budget."""


@dataclass(frozen=True)
class BudgetRequest:
    """``metric`` ∈ {params, macs, latency}; ``fraction``: of the dense cost, kept at most."""

    metric: str
    fraction: float
    tolerance: float = 0.02


def plan_to_budget(scores: dict[str, torch.Tensor], groups: list[PrunableGroup], cost: PlanCost,
                   request: BudgetRequest, *, comparable: bool = False, min_keep_fraction: float = 0.0,
                   round_to: int = 1, meta: dict[str, Any] | None = None) -> PruningPlan:
    """The plan that keeps the most while ``cost(plan) ≤ fraction · cost.dense`` (module docstring).

    ``comparable``: allocate globally by importance (scores comparable across groups); otherwise a
    uniform fraction per group. ``plan.meta["budget"]`` records the request and what was achieved.
    Raises :class:`BudgetUnreachable` when no allowed plan is cheap enough.
    """
    allocation = "global" if comparable else "uniform"
    limit = request.fraction * cost.dense

    def plan_at(level: float) -> PruningPlan:
        return make_plan(scores, groups, level, "global" if comparable else "local", min_keep_fraction,
                         round_to=round_to)

    evaluations = [0]

    def costs(plan: PruningPlan) -> float:
        evaluations[0] += 1
        return cost(plan)

    levels = change_levels(groups, scores, comparable)
    best = plan_at(levels[0])
    if costs(best) > limit:
        low, high = 0, len(levels) - 1   # cost(plan_at(levels[low])) > limit ≥ cost(plan_at(levels[high])), once checked
        best = plan_at(levels[high])
        smallest = costs(best)
        if smallest > limit:
            raise BudgetUnreachable(
                f"a {request.metric} budget of {request.fraction:g} cannot be met: the most pruned plan allowed "
                f"keeps {smallest / cost.dense:.3f} of the dense model's {request.metric} (each group keeps at least "
                f"min_keep units{', min_keep_fraction' if comparable else ''}{', round_to' if round_to > 1 else ''}; "
                f"groups the importance does not score are kept whole; prune more targets or raise the budget)")
        richer = plan_at(levels[low])
        while high - low > 1:
            middle = (low + high) // 2
            candidate = plan_at(levels[middle])
            if costs(candidate) <= limit:
                high, best = middle, candidate
            else:
                low, richer = middle, candidate
        best = _add_back(best, richer, scores, comparable, lambda p: costs(p) <= limit)
    achieved = cost(best) / cost.dense
    record = {"metric": request.metric, "requested": request.fraction, "achieved": achieved,
              "tolerance": request.tolerance, "within_tolerance": request.fraction - achieved <= request.tolerance,
              "allocation": allocation, "cost_evaluations": evaluations[0]}
    best.meta = {"budget": record, "scope": "global" if comparable else "local", **(meta or {})}
    if round_to > 1:
        best.meta["round_to"] = round_to
    return best


def change_levels(groups: list[PrunableGroup], scores: dict[str, torch.Tensor], comparable: bool) -> list[float]:
    """Every removal level at which plan(t) changes, ascending from 0 to :data:`MAX_LEVEL`: a kept
    count floor(n·(1 − t)) steps at t = 1 − k/n, for n a group's size (uniform) or a kind's total
    (global allocation) — so bisection over this list sees every distinct plan, in log₂ of its length."""
    scored = [g for g in groups if g.name in scores]
    if comparable:
        totals = {sum(g.size for g in scored if g.kind == kind) for kind in {g.kind for g in scored}}
    else:
        totals = {g.size for g in scored}
    return sorted({0.0, MAX_LEVEL} | {1.0 - k / n for n in totals for k in range(1, n)})


def _add_back(plan: PruningPlan, richer: PruningPlan, scores: dict[str, torch.Tensor], comparable: bool,
              fits: Callable[[PruningPlan], bool]) -> PruningPlan:
    """``plan`` plus, group by group, the units ``richer`` keeps beyond it, while ``fits`` holds.

    Groups are tried most important addition first when scores are comparable, else in group order;
    a group takes its whole difference (a difference of two rounded counts, so ``round_to`` holds).
    """
    extra = {name: sorted(set(richer.groups[name].keep) - set(gp.keep)) for name, gp in plan.groups.items()}
    order = [name for name in plan.groups if extra[name]]
    if comparable:
        order.sort(key=lambda name: -float(scores[name][extra[name]].max()))
    current = plan
    for name in order:
        old = current.groups[name]
        groups = dict(current.groups)
        groups[name] = GroupPlan(old.kind, old.size, sorted(old.keep + extra[name]))
        candidate = PruningPlan(groups=groups, meta=dict(current.meta))
        if fits(candidate):
            current = candidate
    return current
