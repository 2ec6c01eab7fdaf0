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


def _top(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores; ties go to the lower index (stable); returned sorted."""
    order = torch.sort(scores.detach().double().cpu(), descending=True, stable=True).indices
    return sorted(order[:k].tolist())


def make_plan(scores: dict[str, torch.Tensor], groups: list[PrunableGroup], sparsity: float,
              scope: Literal["local", "global"] = "local", min_keep_fraction: float = 0.0,
              meta: dict[str, Any] | None = None) -> PruningPlan:
    """Turn importance scores into a plan.

    - ``local``: every group keeps floor(size·(1−sparsity)) of its own units (FACES, uniform per block).
    - ``global``: one ranking over all groups of the same kind; each group keeps at least
      ``max(min_keep, floor(size·min_keep_fraction))``; the kept total per kind is
      floor(total·(1−sparsity)). Scores must be comparable across groups (the importance's job).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    scored = [g for g in groups if g.name in scores]
    for g in scored:
        if scores[g.name].numel() != g.size:
            raise ValueError(f"importance gave {scores[g.name].numel()} scores for group {g.name} of size {g.size}")
    plan_groups: dict[str, GroupPlan] = {}
    if scope == "local":
        for g in scored:
            plan_groups[g.name] = GroupPlan(g.kind, g.size, _top(scores[g.name], keep_count(g.size, sparsity, g.min_keep)))
    elif scope == "global":
        for kind in sorted({g.kind for g in scored}):
            members = [g for g in scored if g.kind == kind]
            plan_groups.update(_global_kind(members, scores, sparsity, min_keep_fraction))
    else:
        raise ValueError(f"scope must be 'local' or 'global', got {scope!r}")
    info = {"sparsity": sparsity, "scope": scope}
    info.update(meta or {})
    return PruningPlan(groups=plan_groups, meta=info)


def _global_kind(members: list[PrunableGroup], scores: dict[str, torch.Tensor], sparsity: float,
                 min_keep_fraction: float) -> dict[str, GroupPlan]:
    total_keep = keep_count(sum(g.size for g in members), sparsity, 0)
    floors = {g.name: max(g.min_keep, math.floor(g.size * min_keep_fraction + 1e-9)) for g in members}
    kept = {g.name: set(_top(scores[g.name], floors[g.name])) for g in members}
    budget = total_keep - sum(len(v) for v in kept.values())
    rest = [(float(scores[g.name][i]), gi, i) for gi, g in enumerate(members)
            for i in range(g.size) if i not in kept[g.name]]
    rest.sort(key=lambda t: (-t[0], t[1], t[2]))
    for _score, gi, i in rest[:max(0, budget)]:
        kept[members[gi].name].add(i)
    return {g.name: GroupPlan(g.kind, g.size, sorted(kept[g.name])) for g in members}
