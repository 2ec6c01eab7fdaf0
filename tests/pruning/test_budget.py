"""``prune.budget``: params / MACs / latency budgets met within tolerance, the planner's two allocations,
round_to under a budget, the latency cost table (fake and one real measurement), recipe errors."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from corecompress.plugin.loading import load_plugins
from corecompress.pruning.budget import BudgetRequest, BudgetUnreachable, plan_to_budget
from corecompress.pruning.cost_table import CostTable, LatencyCost, load_or_measure, measure_cost_table, relative_name
from corecompress.pruning.physical import apply_physical
from corecompress.pruning.plan import ROUND_EXEMPT_KINDS, GroupPlan, PruningPlan
from corecompress.pruning.plan_cost import MacCost, ParameterCost
from corecompress.testing.stand_ins import stand_in_model
from corecompress.tools import measure

TARGETS = ("channels", "heads", "neurons")
REGISTRY = load_plugins().registry


def _model(name: str):
    if name == "nano":
        model, spec = stand_in_model("swinface", REGISTRY, preset="nano")
    else:
        model, spec = stand_in_model("tiny_vit", dim=64, num_heads=8, depth=2)
    return model.eval(), spec, spec.prunable_groups(model, TARGETS)


def _random_scores(groups, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {g.name: torch.rand(g.size, generator=gen) for g in groups}


@pytest.mark.parametrize("name", ["tiny_vit", "nano"])
@pytest.mark.parametrize("metric,fraction", [("params", 0.5), ("macs", 0.6)])
def test_params_and_macs_budgets_are_met_within_tolerance(name, metric, fraction):
    model, spec, groups = _model(name)
    cost = ParameterCost(model, groups) if metric == "params" else MacCost(model, groups, spec.input_size)
    request = BudgetRequest(metric, fraction, tolerance=0.02)
    plan = plan_to_budget(_random_scores(groups), groups, cost, request)
    pruned = apply_physical(copy.deepcopy(model), groups, plan)
    if metric == "params":
        achieved = measure.count_parameters(pruned) / measure.count_parameters(model)
    else:
        achieved = measure.count_macs(pruned, spec.input_size) / measure.count_macs(model, spec.input_size)
    assert fraction - 0.02 <= achieved <= fraction      # what the physically pruned model really has
    assert plan.meta["budget"]["achieved"] == pytest.approx(achieved)
    assert plan.meta["budget"]["within_tolerance"] and plan.meta["budget"]["requested"] == fraction


def test_non_comparable_scores_get_one_uniform_fraction_comparable_ones_a_global_ranking():
    model, spec, groups = _model("tiny_vit")
    groups = [g for g in groups if g.kind == "neurons"]
    # block 0's units all score above block 1's: a global ranking takes from block 1 first
    scores = {g.name: torch.rand(g.size) + (10.0 if g.block.endswith("0") else 0.0) for g in groups}
    cost = ParameterCost(model, groups)
    uniform = plan_to_budget(scores, groups, cost, BudgetRequest("params", 0.8))
    kept = [len(uniform.groups[g.name].keep) for g in groups]
    assert uniform.meta["budget"]["allocation"] == "uniform" and max(kept) - min(kept) <= 1
    ranked = plan_to_budget(scores, groups, cost, BudgetRequest("params", 0.8), comparable=True, min_keep_fraction=0.1)
    first, second = (len(ranked.groups[g.name].keep) for g in groups)
    assert ranked.meta["budget"]["allocation"] == "global" and first == groups[0].size and second < first - 1


def test_round_to_is_kept_under_a_budget():
    model, spec, groups = _model("nano")
    cost = ParameterCost(model, groups)
    plan = plan_to_budget(_random_scores(groups), groups, cost, BudgetRequest("params", 0.5, 0.05), round_to=8)
    for g in groups:
        kept = len(plan.groups[g.name].keep)
        assert g.kind in ROUND_EXEMPT_KINDS or kept % 8 == 0 or kept == g.size, (g.name, kept)
    assert cost(plan) <= 0.5 * cost.dense and plan.meta["round_to"] == 8


def test_an_unreachable_budget_is_one_clear_error():
    model, spec, groups = _model("tiny_vit")
    with pytest.raises(BudgetUnreachable, match="cannot be met: the most pruned plan allowed keeps"):
        plan_to_budget(_random_scores(groups), groups, ParameterCost(model, groups), BudgetRequest("params", 0.05))


def _fake_table(groups, per_unit: float = 1e-3) -> CostTable:
    """Every block costs 1 ms per kept unit of each group on top of 10 ms; the rest of the model 5 ms."""
    blocks, tables = {}, {}
    for block in dict.fromkeys(g.block for g in groups):
        members = [g for g in groups if g.block == block]
        dense = 0.010 + per_unit * sum(g.size for g in members)
        entry = {"dense": dense, "groups": {}}
        for g in members:
            widths = [1, g.size // 2, g.size]
            entry["groups"][relative_name(g)] = {"widths": widths, "seconds": [dense - per_unit * (g.size - w) for w in widths]}
        blocks[block], tables[block] = block, entry
    return CostTable(key={}, model_seconds=0.005 + sum(t["dense"] for t in tables.values()), blocks=blocks, tables=tables)


def test_latency_budget_with_a_fake_cost_table_is_deterministic_and_met():
    model, spec, groups = _model("tiny_vit")
    table = _fake_table(groups)
    cost = LatencyCost(table, groups)
    # the prediction is the table's own arithmetic: 5 ms + per block 10 ms + 1 ms per kept unit
    plan = plan_to_budget(_random_scores(groups), groups, cost, BudgetRequest("latency", 0.6, 0.01))
    kept_units = sum(len(gp.keep) for gp in plan.groups.values())
    assert cost(plan) == pytest.approx(0.005 + 0.010 * len(table.blocks) + 1e-3 * kept_units)
    assert 0.59 <= plan.meta["budget"]["achieved"] <= 0.6
    again = plan_to_budget(_random_scores(groups), groups, cost, BudgetRequest("latency", 0.6, 0.01))
    assert again.to_dict() == plan.to_dict()


def test_groups_of_one_block_save_less_together_when_the_joint_timing_says_so():
    """The joint ½ timing scales every saving of its block (k = joint / sum of separate savings)."""
    model, spec, groups = _model("tiny_vit")
    table = _fake_table(groups)
    additive = LatencyCost(table, groups)
    for entry in table.tables.values():
        halves = {name: e["widths"][1] for name, e in entry["groups"].items()}
        separate = sum(1e-3 * (size - w) for size, w in ((e["widths"][-1], e["widths"][1])
                                                          for e in entry["groups"].values()))
        entry["joint"] = {"widths": halves, "seconds": entry["dense"] - 0.5 * separate}  # half the additive saving
    joint = LatencyCost(table, groups)
    assert list(joint.interaction.values()) == pytest.approx([0.5] * len(table.blocks))
    assert set(additive.interaction.values()) == {1.0}
    plan = plan_to_budget(_random_scores(groups), groups, ParameterCost(model, groups), BudgetRequest("params", 0.5))
    assert joint(plan) - joint.rest == pytest.approx((additive(plan) - additive.rest + (
        sum(entry["dense"] for entry in table.tables.values()))) / 2)
    channels_only = [g for g in groups if g.kind == "channels"]  # not the groups the joint timing pruned
    assert set(LatencyCost(table, channels_only).interaction.values()) == {1.0}


def test_the_whole_model_at_half_calibrates_how_the_model_follows_its_blocks():
    """With the whole model timed at ½, the plan at ½ is predicted at exactly that time (s = 2 here)."""
    model, spec, groups = _model("tiny_vit")
    table = _fake_table(groups)
    saving = 0.0
    for entry in table.tables.values():
        entry["half"] = entry["dense"] - sum(1e-3 * (e["widths"][-1] - e["widths"][1]) for e in entry["groups"].values())
        saving += entry["dense"] - entry["half"]
    table.half_model_seconds = table.model_seconds - 2 * saving
    cost = LatencyCost(table, groups)
    assert cost.slope == pytest.approx(2.0)
    half_plan = PruningPlan({g.name: GroupPlan(g.kind, g.size, list(range(g.size // 2))) for g in groups})
    assert cost(half_plan) == pytest.approx(table.half_model_seconds)
    assert LatencyCost(CostTable.from_dict(json.loads(json.dumps(table.to_dict()))), groups)(half_plan) == \
        pytest.approx(table.half_model_seconds)  # kept through the cached JSON


def test_a_real_cost_table_is_measured_once_and_cached(tmp_path):
    model, spec = stand_in_model("tiny_vit")
    groups = spec.prunable_groups(model, TARGETS)
    path = tmp_path / "cost_table.json"
    key = {"model": "tiny_vit", "batch_size": 4}
    table = load_or_measure(path, key, lambda: measure_cost_table(model.eval(), groups, spec.input_size, 4, key))
    assert set(table.blocks) == {"blocks.0", "blocks.1"} and table.model_seconds > 0
    for block, signature in table.blocks.items():
        entry = table.tables[signature]
        assert set(entry["groups"]) == {"attn_in", "mlp_in", "heads", "mlp_hidden"}
        assert set(entry["joint"]["widths"]) == set(entry["groups"]) and entry["joint"]["seconds"] > 0
        assert entry["half"] == entry["joint"]["seconds"]
        assert all(s > 0 for e in entry["groups"].values() for s in e["seconds"])
    assert 0 < table.half_model_seconds
    assert json.loads(path.read_text())["key"] == key

    def must_not_measure():
        raise AssertionError("the cached table should have been used")
    assert load_or_measure(path, key, must_not_measure).to_dict() == table.to_dict()
    predicted = LatencyCost(table, groups)
    assert predicted(plan_to_budget(_random_scores(groups), groups, ParameterCost(model, groups),
                                    BudgetRequest("params", 0.5))) <= predicted.dense


RECIPE = {
    "version": 1, "name": "budget", "seed": 0, "threads": 1,
    "model": {"name": "tiny_vit", "num_outputs": 10},
    "data": {"name": "synthetic_prototypes", "num_classes": 10, "train_per_class": 4},
    "evaluate": [{"name": "efficiency", "batch_sizes": [8]}],
    "prune": {"importance": "l1", "targets": list(TARGETS), "apply": "physical", "budget": {"params": 0.5}},
    "export": None,
}


def _write(tmp_path, **prune):
    recipe = copy.deepcopy(RECIPE)
    recipe["prune"].update(prune)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("prune,message", [
    ({"sparsity": 0.5}, "prune.budget: give sparsity or budget, not both"),
    ({"budget": {"params": 0.5, "macs": 0.5}}, "prune.budget: give exactly one of params, macs, latency"),
    ({"budget": {}}, "prune.budget: give exactly one of params, macs, latency"),
    ({"budget": {"latency": 1.5}}, "prune.budget.latency: must be in [0.0, 1.0]"),
    ({"rounds": 3, "ramp_fraction": 0.5}, "prune.budget: a budget is planned one-shot"),
])
def test_budget_recipe_mistakes_are_one_line_and_exit_2(cli, tmp_path, prune, message):
    code, _out, err = cli("validate", _write(tmp_path, **prune))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_an_unreachable_budget_stops_the_run_with_one_line(cli, tmp_path):
    code, _out, err = cli("run", _write(tmp_path, budget={"params": 0.02}), "--out", tmp_path / "run", "--quiet")
    assert code == 2 and "prune.budget: a params budget of 0.02 cannot be met" in err
    assert "Traceback" not in err


def test_a_run_to_a_budget_reports_requested_and_achieved(cli, tmp_path):
    out = tmp_path / "run"
    code, _out, err = cli("run", _write(tmp_path, budget={"macs": 0.5}), "--out", out, "--quiet")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    assert metrics["budget"] == plan["meta"]["budget"] and 0.48 <= metrics["budget"]["achieved"] <= 0.5
    assert metrics["after"]["efficiency/macs"] / metrics["before"]["efficiency/macs"] == pytest.approx(
        metrics["budget"]["achieved"])
    assert "- budget: macs 0.5 of the dense model requested" in (out / "report.md").read_text()
