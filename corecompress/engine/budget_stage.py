"""The plan stage under ``prune.budget``: the cost model for the budget's metric, then the planner.

``params`` and ``macs`` are counted exactly (:mod:`corecompress.pruning.plan_cost`); ``latency`` uses
the per-block cost table measured on the run's device at ``budget.batch_size`` with the run's thread
count, cached in the run directory as ``cost_table.json`` (:mod:`corecompress.pruning.cost_table`).
Which allocation the planner uses follows the importance's ``comparable_across_groups`` and
``prune.scope`` (:mod:`corecompress.pruning.budget`). The result is ``metrics["budget"]`` and
``plan.meta["budget"]``: requested and achieved fraction and, for latency, the predicted speed-up
(the measured one is the ``efficiency`` evaluator's, at the same batch size, in the report).
"""
from __future__ import annotations

from typing import Any

import torch

from corecompress.engine import distributed
from corecompress.errors import UserError
from corecompress.pruning.budget import BudgetRequest, BudgetUnreachable, plan_to_budget
from corecompress.pruning.cost_table import LatencyCost, load_or_measure, measure_cost_table
from corecompress.pruning.plan import PruningPlan
from corecompress.pruning.plan_cost import MacCost, ParameterCost, PlanCost

COST_TABLE_FILE = "cost_table.json"


def cost_model(ctx: Any) -> PlanCost:
    """The cost model of the recipe's budget metric for the run's model and groups."""
    budget = ctx.recipe.prune.budget
    if budget.metric == "params":
        return ParameterCost(ctx.model, ctx.groups)
    if budget.metric == "macs":
        return MacCost(ctx.model, ctx.groups, tuple(ctx.model_spec.input_size))
    key = {"model": ctx.recipe.model.to_dict(), "device": str(ctx.device), "batch_size": budget.batch_size,
           "threads": torch.get_num_threads(), "torch": torch.__version__, "repeats": budget.repeats,
           "groups": [[g.name, g.kind, g.size] for g in ctx.groups]}

    def measure() -> Any:
        ctx.log.info("cost table: measuring block latencies at batch %d, %d threads on %s", budget.batch_size,
                     torch.get_num_threads(), ctx.device)
        return measure_cost_table(ctx.model, ctx.groups, tuple(ctx.model_spec.input_size), budget.batch_size, key,
                                  repeats=budget.repeats, log=ctx.log.info)

    table = load_or_measure(ctx.out_dir / COST_TABLE_FILE, key, measure, log=ctx.log.info,
                            write=distributed.is_main())  # every rank measures its device; rank 0's plan is used
    return LatencyCost(table, ctx.groups)


def plan_for_budget(ctx: Any, scores: dict[str, torch.Tensor], meta: dict[str, Any]) -> PruningPlan:
    """The plan meeting ``prune.budget``; one line (UserError) when it cannot be met."""
    p = ctx.recipe.prune
    budget = p.budget
    comparable = bool(getattr(ctx.create("importance", p.importance), "comparable_across_groups", False))
    if p.scope == "global" and not comparable:
        ctx.log.warning("warning: importance '%s' does not declare its scores comparable across groups; the budget "
                        "is met with a uniform fraction per group (scope: local)", p.importance.name)
    cost = cost_model(ctx)
    request = BudgetRequest(budget.metric, budget.fraction, budget.tolerance)
    try:
        plan = plan_to_budget(scores, ctx.groups, cost, request, comparable=comparable and p.scope == "global",
                              min_keep_fraction=p.min_keep_fraction, round_to=p.round_to, meta=meta)
    except BudgetUnreachable as exc:
        raise UserError(f"prune.budget: {exc}") from None
    record = plan.meta["budget"]
    if budget.metric == "latency":
        record.update(batch_size=budget.batch_size, threads=torch.get_num_threads(), device=str(ctx.device),
                      predicted_speedup=1.0 / record["achieved"])
    if not record["within_tolerance"]:
        ctx.log.warning("warning: prune.budget: the closest plan keeps %.3f of the %s (asked %.3f, tolerance %.3f): "
                        "the units are too coarse (heads, round_to) for a closer plan", record["achieved"],
                        budget.metric, budget.fraction, budget.tolerance)
    ctx.log.info("budget: %s %.3f requested, %.3f achieved (%s allocation, %d plans costed)", budget.metric,
                 budget.fraction, record["achieved"], record["allocation"], record["cost_evaluations"])
    return plan
