"""Pruning plans: which units of which group are kept. JSON on disk; consumed by masks and removal.

``sparsity`` is always the fraction of units *removed*, relative to the original model.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from corecompress.pruning.groups import PrunableGroup

PLAN_FORMAT_VERSION = 1

#: Group kinds that ``round_to`` leaves alone: a unit is already a whole head, and head counts are small.
ROUND_EXEMPT_KINDS = frozenset({"heads"})


@dataclass
class GroupPlan:
    kind: str
    size: int
    keep: list[int]

    @property
    def removed(self) -> int:
        return self.size - len(self.keep)


@dataclass
class PruningPlan:
    groups: dict[str, GroupPlan]
    meta: dict[str, Any] = field(default_factory=dict)

    def keep_tensor(self, name: str) -> torch.Tensor:
        return torch.tensor(self.groups[name].keep, dtype=torch.long)

    def unit_ratio(self) -> float:
        """Fraction of units removed over all groups."""
        total = sum(g.size for g in self.groups.values())
        return sum(g.removed for g in self.groups.values()) / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"format": "corecompress-plan", "version": PLAN_FORMAT_VERSION, "meta": self.meta,
                "groups": {n: {"kind": g.kind, "size": g.size, "keep": list(g.keep)} for n, g in self.groups.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        if data.get("format") != "corecompress-plan" or data.get("version") != PLAN_FORMAT_VERSION:
            raise ValueError("not a corecompress plan (format/version missing or unsupported)")
        groups = {}
        for name, g in data["groups"].items():
            keep = [int(i) for i in g["keep"]]
            size = int(g["size"])
            if sorted(set(keep)) != keep or (keep and (keep[0] < 0 or keep[-1] >= size)):
                raise ValueError(f"plan group {name}: keep must be sorted unique indices in [0, {size})")
            groups[name] = GroupPlan(str(g["kind"]), size, keep)
        return cls(groups=groups, meta=dict(data.get("meta", {})))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def check(self, groups: list[PrunableGroup]) -> None:
        """Raise ValueError unless every planned group exists with the same size."""
        by_name = {g.name: g for g in groups}
        for name, gp in self.groups.items():
            if name not in by_name:
                raise ValueError(f"plan group {name} is not a prunable group of this model")
            if by_name[name].size != gp.size:
                raise ValueError(f"plan group {name}: size {gp.size} but the model has {by_name[name].size}")


def keep_count(size: int, sparsity: float, min_keep: int = 1) -> int:
    """floor(size · (1 − sparsity)), as FACES does; a tiny epsilon absorbs float error (10·(1−0.9))."""
    return max(min_keep, min(size, math.floor(size * (1.0 - sparsity) + 1e-9)))


def rounded_count(keep: int, size: int, floor: int, round_to: int) -> int:
    """``keep`` moved to the nearest multiple of ``round_to`` (ties up), at least ``floor`` rounded up to a
    multiple, at most ``size`` (so a group whose size is no multiple may keep all its units).

    ``round_to`` 1 returns ``keep`` unchanged. The result never decreases when ``keep`` grows, which keeps
    gradual plans monotone.
    """
    if round_to <= 1:
        return keep
    nearest = (2 * keep + round_to) // (2 * round_to) * round_to
    lowest = -(-floor // round_to) * round_to
    return min(size, max(lowest, nearest))


def _top(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores; ties go to the lower index (stable); returned sorted."""
    order = torch.sort(scores.detach().double().cpu(), descending=True, stable=True).indices
    return sorted(order[:k].tolist())


def make_plan(scores: dict[str, torch.Tensor], groups: list[PrunableGroup], sparsity: float,
              scope: Literal["local", "global"] = "local", min_keep_fraction: float = 0.0,
              meta: dict[str, Any] | None = None, round_to: int = 1) -> PruningPlan:
    """Turn importance scores into a plan.

    - ``local``: every group keeps floor(size·(1−sparsity)) of its own units (FACES, uniform per block).
    - ``global``: one ranking over all groups of the same kind; each group keeps at least
      ``max(min_keep, floor(size·min_keep_fraction))``; the kept total per kind is
      floor(total·(1−sparsity)). Scores must be comparable across groups (the importance's job).

    ``round_to`` N > 1 (tensor-core friendly sizes): each group's kept count becomes
    :func:`rounded_count` of it — the nearest multiple of N (ties up), never below the group's floor
    (``min_keep``; under ``global`` also the ``min_keep_fraction`` floor) rounded up to a multiple of
    N, never above the group size (the whole group is kept then). The highest-scored units are kept.
    Under ``global`` the counts are rounded after the global allocation, so the kept total may differ
    slightly from floor(total·(1−sparsity)); units scored −∞ (removed by an earlier gradual round)
    never fill the global budget, so rounded gradual plans stay monotone. Groups of a kind in
    :data:`ROUND_EXEMPT_KINDS` (heads) are not rounded. ``meta["round_to"]`` records N when N > 1.
    """
    if round_to < 1:
        raise ValueError(f"round_to must be at least 1, got {round_to}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    scored = [g for g in groups if g.name in scores]
    for g in scored:
        if scores[g.name].numel() != g.size:
            raise ValueError(f"importance gave {scores[g.name].numel()} scores for group {g.name} of size {g.size}")
    plan_groups: dict[str, GroupPlan] = {}
    if scope == "local":
        for g in scored:
            k = keep_count(g.size, sparsity, g.min_keep)
            k = rounded_count(k, g.size, g.min_keep, _round_to_for(g, round_to))
            plan_groups[g.name] = GroupPlan(g.kind, g.size, _top(scores[g.name], k))
    elif scope == "global":
        for kind in sorted({g.kind for g in scored}):
            members = [g for g in scored if g.kind == kind]
            plan_groups.update(_global_kind(members, scores, sparsity, min_keep_fraction, round_to))
    else:
        raise ValueError(f"scope must be 'local' or 'global', got {scope!r}")
    info: dict[str, Any] = {"sparsity": sparsity, "scope": scope}
    if round_to > 1:
        info["round_to"] = round_to
    info.update(meta or {})
    return PruningPlan(groups=plan_groups, meta=info)


def _round_to_for(group: PrunableGroup, round_to: int) -> int:
    """The multiple this group's kept count is rounded to (1 = not rounded)."""
    return 1 if group.kind in ROUND_EXEMPT_KINDS else round_to


def _global_kind(members: list[PrunableGroup], scores: dict[str, torch.Tensor], sparsity: float,
                 min_keep_fraction: float, round_to: int = 1) -> dict[str, GroupPlan]:
    total_keep = keep_count(sum(g.size for g in members), sparsity, 0)
    floors = {g.name: max(g.min_keep, math.floor(g.size * min_keep_fraction + 1e-9)) for g in members}
    kept = {g.name: set(_top(scores[g.name], floors[g.name])) for g in members}
    budget = total_keep - sum(len(v) for v in kept.values())
    rest = [(float(scores[g.name][i]), gi, i) for gi, g in enumerate(members)
            for i in range(g.size) if i not in kept[g.name]]
    if round_to > 1:  # what a gradual round removed stays removed, also after rounding up
        rest = [t for t in rest if t[0] != -math.inf]
    rest.sort(key=lambda t: (-t[0], t[1], t[2]))
    for _score, gi, i in rest[:max(0, budget)]:
        kept[members[gi].name].add(i)
    if round_to == 1:
        return {g.name: GroupPlan(g.kind, g.size, sorted(kept[g.name])) for g in members}
    # kept[g] is the top len(kept[g]) of g in _top's order (score, then index), so _top of the rounded count
    # is a superset or a subset of it
    return {g.name: GroupPlan(g.kind, g.size, _top(scores[g.name], rounded_count(
        len(kept[g.name]), g.size, floors[g.name], _round_to_for(g, round_to)))) for g in members}
