"""Gradual (iterative) pruning: the sparsity rises over rounds during retraining, under soft masks.

The schedule of Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
compression" (ICLR workshop 2018): round k of R prunes to

    s_k = s_final · ramp(k, R),   e.g. ramp(k, R) = 1 − (1 − k/R)³   (``ramp: cubic``; ``linear``: k/R)

— every ratio relative to the *original* model. The ramp is a schedule component (``prune.ramp``, a
name or a mapping with ``name`` and options): built in are ``sparsity_cubic`` and ``sparsity_linear``,
which recipes may call ``cubic`` and ``linear`` (:data:`RAMP_SHORTHANDS`; the learning-rate schedule
``linear`` is something else); a plugin's schedule works under its own name.

Round 1 happens before the first retraining step, round R after ``ramp_fraction`` of the retraining
steps, the rounds in between evenly spaced; the rest of retraining fine-tunes at the final sparsity.
Between rounds the model keeps its size: what a round removes is zeroed and re-zeroed after every
optimizer step (soft masks), and a unit removed once stays removed (its score is −∞ in later rounds).
After retraining, the plan the masks describe is applied with the recipe's applier — physically, by
default — which changes nothing the model computes (masked ≡ physical by construction).

One optimizer and one learning-rate schedule run through all rounds (as in Zhu & Gupta), so a
gradual run and a one-shot run with the same ``retrain.steps`` have the same retraining budget.
"""
from __future__ import annotations

import math
import numbers
import time
from typing import Any, Callable

import torch

from corecompress.pruning.groups import PrunableGroup
from corecompress.pruning.masking import MaskSet, build_masks
from corecompress.pruning.plan import GroupPlan, PruningPlan

#: A sparsity ramp: a schedule called as ``ramp(k, rounds)`` for round k = 1..rounds, returning the
#: fraction of the final sparsity reached (see the schedule protocol in corecompress.plugin.hookspecs).
Ramp = Callable[[int, int], float]

#: What ``prune.ramp`` may also say, for the built-in ramps' registered names (kept from before ramps
#: were schedule components; the plain schedule name ``linear`` is a learning-rate schedule).
RAMP_SHORTHANDS: dict[str, str] = {"cubic": "sparsity_cubic", "linear": "sparsity_linear"}

#: How far from 1 the ramp's value at the last round may be (float noise); the last round then prunes
#: to exactly the final sparsity.
LAST_ROUND_TOLERANCE = 1e-9


def round_sparsities(final: float, rounds: int, ramp: Ramp) -> list[float]:
    """Sparsity of rounds 1..R: ``final · ramp(k, R)`` (Zhu & Gupta 2018); the last is exactly ``final``.

    Gradual pruning needs a monotone plan (a removed unit stays removed), so the ramp's values must be
    numbers in [0, 1] that never decrease and reach 1 at round R; anything else is a ValueError that
    names the round. One round is one-shot pruning: ``[final]``, without asking the ramp.
    """
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    if rounds == 1:
        return [final]
    fractions: list[float] = []
    for k in range(1, rounds + 1):
        try:
            value = ramp(k, rounds)
        except ArithmeticError as exc:  # e.g. an overflow of the ramp's options
            raise ValueError(f"the ramp failed for round {k} of {rounds}: {exc}") from None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"the ramp gave {value!r} for round {k} of {rounds}; expected a number in [0, 1]")
        fraction = float(value)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"the ramp gave {fraction} for round {k} of {rounds}; it must be a fraction of the "
                             "final sparsity, in [0, 1]")
        if fractions and fraction < fractions[-1]:
            raise ValueError(f"the ramp decreases from {fractions[-1]} (round {k - 1}) to {fraction} (round {k}) "
                             f"of {rounds}; pruned units stay pruned, so the sparsity may only rise")
        fractions.append(fraction)
    if abs(fractions[-1] - 1.0) > LAST_ROUND_TOLERANCE:
        raise ValueError(f"the ramp reaches {fractions[-1]} at the last round ({rounds}); it must reach 1, "
                         "the final prune.sparsity")
    out = [final * fraction for fraction in fractions]
    out[-1] = final
    return out


def ramp_label(chosen: Any) -> str | dict[str, Any]:
    """How plans record the recipe's ramp (a ``Choice``): its name — ``cubic`` / ``linear`` for the
    built-ins, as recipes say them — or, for a ramp with options, the mapping ``{name, options...}``."""
    described = chosen.to_dict()
    name = described.pop("name")
    if described:
        return {"name": name, **described}
    shorthand = {full: short for short, full in RAMP_SHORTHANDS.items()}
    return shorthand.get(name, name)


def round_steps(rounds: int, total_steps: int, ramp_fraction: float) -> list[int]:
    """The number of completed retraining steps before each round: 0 for round 1, evenly spaced up to
    floor(ramp_fraction · total_steps) for round R. Raises ValueError when the rounds cannot be apart."""
    ramp_steps = math.floor(ramp_fraction * total_steps + 1e-9)
    if rounds == 1:
        return [0]
    if ramp_steps < rounds - 1 or ramp_steps >= total_steps:
        raise ValueError(f"{rounds} rounds need at least {rounds - 1} retraining steps before the last round and "
                         f"at least one after it; ramp_fraction · retrain.steps = {ramp_steps} of {total_steps}")
    return [round((k - 1) * ramp_steps / (rounds - 1)) for k in range(1, rounds + 1)]


def removed_by_masks(groups: list[PrunableGroup], masks: MaskSet) -> dict[str, torch.Tensor]:
    """Per group, a bool tensor of the units the masks zero completely (judged on the group's first masked tensor)."""
    out: dict[str, torch.Tensor] = {}
    for g in groups:
        for sl in g.slices:
            mask = masks.masks.get(sl.tensor)
            if mask is None:
                continue
            view = mask.movedim(sl.dim, 0)
            per_unit = sum(view[o:o + g.size * sl.width].reshape(g.size, -1).abs().sum(1) for o in sl.offsets)
            out[g.name] = per_unit == 0
            break
    return out


def plan_from_masks(groups: list[PrunableGroup], masks: MaskSet, meta: dict[str, Any] | None = None,
                    names: Any = None) -> PruningPlan:
    """The plan whose soft masks these are (over the groups in ``names``, default all): every unit not
    zeroed completely is kept."""
    removed = removed_by_masks(groups, masks)
    plan_groups = {}
    for g in groups:
        if names is not None and g.name not in names:
            continue
        gone = removed.get(g.name)
        keep = list(range(g.size)) if gone is None else torch.nonzero(~gone).flatten().tolist()
        plan_groups[g.name] = GroupPlan(g.kind, g.size, keep)
    return PruningPlan(groups=plan_groups, meta=dict(meta or {}))


def keep_removed_out(scores: dict[str, torch.Tensor], removed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scores with the units an earlier round removed set to −∞, so the plan stays monotone."""
    out = {}
    for name, s in scores.items():
        gone = removed.get(name)
        if gone is not None and bool(gone.any()):
            s = s.detach().double().clone()
            s[gone.to(s.device)] = -math.inf
        out[name] = s
    return out


def complete_masks(model: torch.nn.Module, groups: list[PrunableGroup], plan: PruningPlan) -> MaskSet:
    """Masks for every trainable tensor of every planned group (all-ones where nothing is removed yet),
    so every round's mask set has the same tensors — what a checkpoint of any round restores into."""
    masks = build_masks(model, groups, plan)
    params = dict(model.named_parameters())
    for g in groups:
        if g.name not in plan.groups:
            continue
        for sl in g.slices:
            if sl.tensor in params and sl.tensor not in masks.masks:
                masks.masks[sl.tensor] = torch.ones_like(params[sl.tensor], device="cpu")
    return masks


class GradualPruner:
    """Runs rounds 2..R from the training loop (round 1 is the runner's ordinary score → plan → apply).

    ``score(model)`` returns importance scores; ``agree(plan)`` makes every rank use rank 0's plan;
    ``save(k, plan)`` writes the round's plan (rank 0). The current masks live in ``context.masks``.
    """

    def __init__(self, context: Any, groups: list[PrunableGroup], sparsities: list[float], steps: list[int],
                 make: Callable[[dict[str, torch.Tensor], float], PruningPlan],
                 score: Callable[[torch.nn.Module], dict[str, torch.Tensor]],
                 agree: Callable[[PruningPlan], PruningPlan], save: Callable[[int, PruningPlan], None]) -> None:
        self.context, self.groups = context, groups
        self.sparsities, self.steps = sparsities, steps
        self.make, self.score, self.agree, self.save = make, score, agree, save

    def __call__(self, completed_steps: int, model: torch.nn.Module) -> None:
        """Prune the round due after ``completed_steps`` steps, if one is."""
        for index, at in enumerate(self.steps):
            if index > 0 and at == completed_steps:
                self.prune_round(index + 1, model)

    def record(self, k: int, plan: PruningPlan, seconds: float | None) -> None:
        """Round k in ``metrics["prune_rounds"]`` (replacing an earlier record of it, e.g. from before a resume)."""
        rounds = [r for r in self.context.metrics.get("prune_rounds", []) if r["round"] != k]
        rounds.append({"round": k, "after_step": self.steps[k - 1], "sparsity": self.sparsities[k - 1],
                       "units_removed": plan.unit_ratio(), "scoring_seconds": seconds})
        self.context.metrics["prune_rounds"] = sorted(rounds, key=lambda r: r["round"])

    def prune_round(self, k: int, model: torch.nn.Module) -> PruningPlan:
        ctx = self.context
        start = time.perf_counter()
        scores = keep_removed_out(self.score(model), removed_by_masks(self.groups, ctx.masks))
        plan = self.agree(self.make(scores, self.sparsities[k - 1]))
        plan.check(self.groups)
        masks = complete_masks(model, self.groups, plan)
        masks.apply(model)
        ctx.masks = masks
        model.train()
        self.record(k, plan, time.perf_counter() - start)
        ctx.log.info("gradual pruning round %d/%d after step %d: sparsity %.4f (%.4f of units removed)", k,
                     len(self.steps), self.steps[k - 1], self.sparsities[k - 1], plan.unit_ratio())
        self.save(k, plan)
        return plan
