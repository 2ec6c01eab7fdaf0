"""``prune.round_to``: kept counts are multiples of N (or the whole group), never below the floor, in
local, global and gradual plans; heads are not rounded; round_to 1 is the plan of before."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from corecompress.pruning.gradual import keep_removed_out
from corecompress.pruning.groups import PrunableGroup, Slice
from corecompress.pruning.masking import apply_masks
from corecompress.pruning.physical import apply_physical
from corecompress.pruning.plan import PruningPlan, keep_count, make_plan, rounded_count
from corecompress.testing.stand_ins import stand_in_model

VIT_TARGETS = ("channels", "heads", "neurons")

RECIPE = {
    "version": 1, "name": "round-to", "seed": 0, "threads": 1,
    "model": {"name": "tiny_vit", "num_outputs": 10},
    "data": {"name": "synthetic_prototypes", "num_classes": 10, "train_per_class": 8},
    "train": {"steps": 10, "batch_size": 16, "lr": 3e-3},
    "prune": {"importance": "l1", "targets": ["channels", "heads", "neurons"], "sparsity": 0.5, "apply": "physical",
              "rounds": 4, "ramp": "cubic", "ramp_fraction": 0.6, "round_to": 8},
    "retrain": {"steps": 12, "batch_size": 16, "lr": 1e-3, "log_every": 6},
}


def _scores(groups: list[PrunableGroup], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {g.name: torch.rand(g.size, generator=gen) for g in groups}


def _synthetic(kind: str = "channels") -> list[PrunableGroup]:
    """Groups of awkward sizes (not multiples of 8; one smaller than 8) and varied floors."""
    sizes = [37, 50, 64, 100, 128, 7, 200, 13, 96, 250]
    return [PrunableGroup(f"g{i}", kind, size, (Slice(f"t{i}", 0),), min_keep=1 + (i % 3) * 5)
            for i, size in enumerate(sizes)]


def _top_by_score(score: torch.Tensor, k: int) -> list[int]:
    """The reference choice: the k highest scores, ties to the lower index."""
    ranked = sorted(range(score.numel()), key=lambda i: (-float(score[i]), i))
    return sorted(ranked[:k])


def _check_rounded(plan: PruningPlan, groups: list[PrunableGroup], scores: dict[str, torch.Tensor], n: int,
                   floors: dict[str, int]) -> None:
    for g in groups:
        keep = plan.groups[g.name].keep
        if g.kind == "heads":
            continue
        assert len(keep) % n == 0 or len(keep) == g.size, (g.name, len(keep))
        assert len(keep) >= min(g.size, floors[g.name]), (g.name, len(keep))
        assert keep == _top_by_score(scores[g.name], len(keep)), g.name  # the highest-scored units


def test_rounded_count_rule():
    assert [rounded_count(k, 100, 1, 8) for k in (0, 3, 4, 11, 12, 13, 20, 95, 96, 99, 100)] == \
        [8, 8, 8, 8, 16, 16, 24, 96, 96, 96, 100]  # nearest multiple, ties up (100: 104), at most the size
    assert rounded_count(9, 100, 17, 8) == 24  # the floor 17 rounded up to 24
    assert rounded_count(30, 37, 1, 64) == 37  # a group smaller than N keeps everything
    assert rounded_count(35, 37, 1, 8) == 32 and rounded_count(37, 37, 1, 8) == 37
    assert rounded_count(22, 32, 1, 1) == 22  # 1: unchanged
    counts = [rounded_count(k, 37, 5, 8) for k in range(38)]
    assert counts == sorted(counts)  # monotone, what gradual plans rely on


@pytest.mark.parametrize("model_name, targets", [("tiny_vit", VIT_TARGETS), ("tiny_cnn", ("filters",))])
@pytest.mark.parametrize("n", [2, 8, 16, 64])
@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_local_plans_on_the_tiny_models_keep_multiples(model_name, targets, n, sparsity):
    model, spec = stand_in_model(model_name, num_outputs=5)
    groups = spec.prunable_groups(model, targets)
    scores = _scores(groups, 3)
    plan = make_plan(scores, groups, sparsity, round_to=n)
    plain = make_plan(scores, groups, sparsity)
    _check_rounded(plan, groups, scores, n, {g.name: g.min_keep for g in groups})
    for g in groups:
        expected = rounded_count(keep_count(g.size, sparsity, g.min_keep), g.size, g.min_keep, n)
        if g.kind == "heads":  # heads stay as they are
            assert plan.groups[g.name].keep == plain.groups[g.name].keep
        else:
            assert len(plan.groups[g.name].keep) == expected
    assert plan.meta["round_to"] == n and "round_to" not in plain.meta


def test_rounding_actually_changes_a_tiny_vit_plan():
    model, spec = stand_in_model("tiny_vit", num_outputs=5)
    groups = spec.prunable_groups(model, VIT_TARGETS)
    plan = make_plan(_scores(groups, 0), groups, 0.3, round_to=8)
    assert len(plan.groups["blocks.0.attn_in"].keep) == 24  # floor(32 · 0.7) = 22 → 24
    assert len(plan.groups["blocks.0.mlp_hidden"].keep) == 48  # floor(64 · 0.7) = 44 → 48 (tie up)
    assert len(plan.groups["blocks.0.heads"].keep) == 2  # floor(4 · 0.7), not rounded


@pytest.mark.parametrize("n", [4, 8, 16, 64])
@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.8, 0.95])
@pytest.mark.parametrize("min_keep_fraction", [0.0, 0.1, 0.3])
def test_global_plans_keep_multiples_and_floors(n, sparsity, min_keep_fraction):
    groups = _synthetic()
    scores = _scores(groups, 7)
    plan = make_plan(scores, groups, sparsity, "global", min_keep_fraction, round_to=n)
    raw = make_plan(scores, groups, sparsity, "global", min_keep_fraction)
    floors = {g.name: max(g.min_keep, math.floor(g.size * min_keep_fraction + 1e-9)) for g in groups}
    _check_rounded(plan, groups, scores, n, floors)
    for g in groups:  # each group's count is the rounding of its count under the global allocation
        assert len(plan.groups[g.name].keep) == rounded_count(len(raw.groups[g.name].keep), g.size, floors[g.name], n)
    assert plan.groups["g5"].keep == list(range(7))  # smaller than every N here: kept whole
    assert plan.meta["round_to"] == n


def test_global_heads_are_not_rounded():
    groups = _synthetic("heads")
    scores = _scores(groups, 1)
    plan = make_plan(scores, groups, 0.5, "global", 0.1, round_to=8)
    assert {n: g.keep for n, g in plan.groups.items()} == \
        {n: g.keep for n, g in make_plan(scores, groups, 0.5, "global", 0.1).groups.items()}


def _reference_plan(scores: dict[str, torch.Tensor], groups: list[PrunableGroup], sparsity: float, scope: str,
                    min_keep_fraction: float) -> dict[str, list[int]]:
    """The plans of before round_to, written out independently: local top-k per group; global floors
    first, then one ranking per kind (score, group order, index)."""
    if scope == "local":
        return {g.name: _top_by_score(scores[g.name], keep_count(g.size, sparsity, g.min_keep)) for g in groups}
    out: dict[str, list[int]] = {}
    for kind in {g.kind for g in groups}:
        members = [g for g in groups if g.kind == kind]
        total = keep_count(sum(g.size for g in members), sparsity, 0)
        kept = {g.name: set(_top_by_score(scores[g.name], max(g.min_keep, math.floor(g.size * min_keep_fraction
                                                                                      + 1e-9)))) for g in members}
        rest = sorted(((-float(scores[g.name][i]), gi, i) for gi, g in enumerate(members) for i in range(g.size)
                       if i not in kept[g.name]))
        for _s, gi, i in rest[:max(0, total - sum(map(len, kept.values())))]:
            kept[members[gi].name].add(i)
        out.update({name: sorted(units) for name, units in kept.items()})
    return out


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("seed", range(4))
def test_round_to_one_is_the_plan_of_before(scope, seed):
    model, spec = stand_in_model("tiny_vit", num_outputs=5)
    groups = spec.prunable_groups(model, VIT_TARGETS) + _synthetic()
    scores = _scores(groups, seed)
    for sparsity in (0.0, 0.25, 0.5, 0.9):
        plan = make_plan(scores, groups, sparsity, scope, 0.1, meta={"x": 1}, round_to=1)
        assert {n: g.keep for n, g in plan.groups.items()} == _reference_plan(scores, groups, sparsity, scope, 0.1)
        assert plan.to_dict() == make_plan(scores, groups, sparsity, scope, 0.1, meta={"x": 1}).to_dict()
        assert plan.meta == {"sparsity": sparsity, "scope": scope, "x": 1}


def test_round_to_below_one_is_refused():
    groups = _synthetic()
    with pytest.raises(ValueError, match="round_to must be at least 1"):
        make_plan(_scores(groups, 0), groups, 0.5, round_to=0)


@pytest.mark.parametrize("model_name, targets", [("tiny_vit", VIT_TARGETS), ("tiny_cnn", ("filters",))])
@pytest.mark.parametrize("scope", ["local", "global"])
def test_masked_equals_physical_after_a_rounded_plan(model_name, targets, scope):
    torch.manual_seed(4)
    model, spec = stand_in_model(model_name, num_outputs=5)
    for m in model.modules():  # non-trivial BatchNorm statistics, so removed filters matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    groups = spec.prunable_groups(model, targets)
    plan = make_plan(_scores(groups, 5), groups, 0.3, scope, 0.1, round_to=8)
    assert any(len(plan.groups[g.name].keep) != keep_count(g.size, 0.3, g.min_keep) for g in groups)  # rounded
    masked, physical = copy.deepcopy(model), copy.deepcopy(model)
    apply_masks(masked, groups, plan)
    apply_physical(physical, groups, plan)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = masked(x), physical(x)
    assert float((a - b).norm() / a.norm()) <= 1e-5
    assert sum(p.numel() for p in physical.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("seed", range(20))
def test_rounded_rounds_stay_monotone_with_fresh_scores(scope, seed):
    """Gradual rounds as the pruner makes them: fresh scores each round, the removed units at −∞."""
    groups = _synthetic()
    keep: dict[str, set[int]] | None = None
    for k, sparsity in enumerate((0.15, 0.3, 0.42, 0.5, 0.55, 0.6)):
        scores = _scores(groups, 100 * seed + k)
        if keep is not None:
            removed = {g.name: torch.tensor([i not in keep[g.name] for i in range(g.size)]) for g in groups}
            scores = keep_removed_out(scores, removed)
        plan = make_plan(scores, groups, sparsity, scope, 0.05, round_to=8)
        now = {n: set(g.keep) for n, g in plan.groups.items()}
        if keep is not None:
            for name in now:
                assert now[name] <= keep[name], (k, name)
        keep = now


def test_global_rounding_down_never_revives_removed_units():
    """Round 1 keeps 11 + 11 of 40, rounded down to 8 + 8; round 2's global budget (20) exceeds the 16 units
    left, and must not be filled with units round 1 removed (12 of them in one group would round to 16)."""
    groups = [PrunableGroup(f"g{i}", "channels", 20, (Slice(f"t{i}", 0),)) for i in range(2)]
    scores = {"g0": 1.0 - 0.05 * torch.arange(20.0), "g1": 0.99 - 0.05 * torch.arange(20.0)}
    first = make_plan(scores, groups, 0.45, "global", 0.0, round_to=8)
    assert [len(g.keep) for g in first.groups.values()] == [8, 8]  # 11 → 8 each
    removed = {g.name: torch.tensor([i not in first.groups[g.name].keep for i in range(20)]) for g in groups}
    second = make_plan(keep_removed_out(scores, removed), groups, 0.5, "global", 0.0, round_to=8)
    for name, group in second.groups.items():
        assert set(group.keep) <= set(first.groups[name].keep), name


def _run(cli, tmp_path: Path, data: dict, name: str) -> tuple[int, str, Path]:  # noqa: ANN001
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump(data))
    code, _out, err = cli("run", recipe, "--out", tmp_path / name)
    return code, err, tmp_path / name


@pytest.mark.parametrize("scope", ["local", "global"])
def test_gradual_run_keeps_multiples_in_every_round(cli, tmp_path, scope):
    data = copy.deepcopy(RECIPE)
    data["prune"]["scope"] = scope
    code, err, run = _run(cli, tmp_path, data, scope)
    assert code == 0, err
    plans = [json.loads((run / f"plan.round{k}.json").read_text()) for k in range(1, 5)]
    for plan in plans:
        assert plan["meta"]["round_to"] == 8
        for name, group in plan["groups"].items():
            if group["kind"] != "heads":
                assert len(group["keep"]) % 8 == 0 or len(group["keep"]) == group["size"], name
    for earlier, later in zip(plans, plans[1:]):
        for name, group in later["groups"].items():
            assert set(group["keep"]) <= set(earlier["groups"][name]["keep"]), name
    removed = [sum(g["size"] - len(g["keep"]) for g in p["groups"].values()) for p in plans]
    assert removed == sorted(removed) and removed[0] < removed[-1]
    final = json.loads((run / "plan.json").read_text())
    assert final["meta"]["round_to"] == 8
    assert {n: g["keep"] for n, g in final["groups"].items()} == {n: g["keep"] for n, g in plans[-1]["groups"].items()}
    if scope == "local":  # floor(32 · (1 − s)) for s = 0.289, 0.4375, 0.492, 0.5 → 22, 18, 16, 16 → 24, 16, 16, 16
        assert [len(p["groups"]["blocks.0.attn_in"]["keep"]) for p in plans] == [24, 16, 16, 16]


@pytest.mark.parametrize("value, message", [
    (0, "prune.round_to: must be at least 1, got 0"),
    (-8, "prune.round_to: must be at least 1, got -8"),
])
def test_recipe_round_to_validates(cli, tmp_path, value, message):
    data = copy.deepcopy(RECIPE)
    data["prune"]["round_to"] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    code, _out, err = cli("validate", path)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_recipe_round_to_is_accepted(cli, tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    code, _out, err = cli("validate", path)
    assert code == 0, err
