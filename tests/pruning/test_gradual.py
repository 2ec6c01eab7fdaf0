"""Gradual pruning (Zhu & Gupta 2018): the cubic ramp, monotone rounds under soft masks, the final
physical apply of the last round's plan, and the recipe errors around it. Ramps are schedule
components: the built-in cubic and linear ones, and a third party's under its own name."""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from corecompress import hookimpl
from corecompress.config.recipe import recipe_to_dict, validate_recipe
from corecompress.errors import RecipeError
from corecompress.plugin.loading import load_plugins
from corecompress.pruning.gradual import plan_from_masks, ramp_label, round_sparsities, round_steps
from corecompress.pruning.masking import build_masks
from corecompress.pruning.plan import make_plan

RECIPE = {
    "version": 1, "name": "gradual", "seed": 0, "threads": 1,
    "model": {"name": "tiny_vit", "num_outputs": 10},
    "data": {"name": "synthetic_prototypes", "num_classes": 10, "train_per_class": 8},
    "train": {"steps": 20, "batch_size": 16, "lr": 3e-3},
    "evaluate": [{"name": "efficiency", "speed": False}],
    "prune": {"importance": "faces", "targets": ["channels"], "sparsity": 0.5, "apply": "physical",
              "rounds": 4, "ramp": "cubic", "ramp_fraction": 0.6},
    "retrain": {"steps": 20, "batch_size": 16, "lr": 1e-3, "log_every": 5},
}


def ramp(name: str, **options):
    """A registered sparsity ramp, as the runner creates it."""
    component = load_plugins().registry.get("schedule", name)
    return component.create(component.parse(options, name))


def old_round_sparsities(final: float, rounds: int, ramp: str) -> list[float]:
    """The round sparsities as computed before ramps were schedule components (the reference)."""
    out = []
    for k in range(1, rounds + 1):
        progress = k / rounds
        fraction = 1.0 - (1.0 - progress) ** 3 if ramp == "cubic" else progress
        out.append(final * fraction)
    out[-1] = final
    return out


def test_cubic_ramp_and_round_steps():
    assert round_sparsities(0.5, 4, ramp("sparsity_cubic")) == pytest.approx(
        [0.5 * (1 - 0.75 ** 3), 0.5 * (1 - 0.5 ** 3), 0.5 * (1 - 0.25 ** 3), 0.5])
    assert round_sparsities(0.6, 3, ramp("sparsity_linear")) == pytest.approx([0.2, 0.4, 0.6])
    assert round_sparsities(0.3, 1, ramp("sparsity_cubic")) == [0.3]
    assert round_steps(4, 100, 0.5) == [0, 17, 33, 50]
    assert round_steps(1, 10, 0.5) == [0]
    with pytest.raises(ValueError, match="3 rounds need"):
        round_steps(3, 3, 0.5)


def test_plan_from_masks_recovers_the_plan():
    from corecompress_builtin.models import TinyViTAdapter, TinyViTOptions

    adapter = TinyViTAdapter(TinyViTOptions())
    model = adapter.build()
    groups = adapter.prunable_groups(model, ("channels", "heads", "neurons"))
    scores = {g.name: torch.rand(g.size, generator=torch.Generator().manual_seed(i)) for i, g in enumerate(groups)}
    plan = make_plan(scores, groups, 0.4)
    recovered = plan_from_masks(groups, build_masks(model, groups, plan))
    assert {n: g.keep for n, g in recovered.groups.items()} == {n: g.keep for n, g in plan.groups.items()}


def _run(cli, tmp_path: Path, data: dict, name: str = "run") -> tuple[int, str, str, Path]:
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump(data))
    out = tmp_path / name
    code, stdout, err = cli("run", recipe, "--out", out)
    return code, stdout, err, out


def test_gradual_run_prunes_monotonically_then_physically(cli, tmp_path):
    code, _out, err, run = _run(cli, tmp_path, RECIPE)
    assert code == 0, err
    plans = [json.loads((run / f"plan.round{k}.json").read_text()) for k in range(1, 5)]
    expected = round_sparsities(0.5, 4, ramp("sparsity_cubic"))
    for plan, sparsity in zip(plans, expected):
        assert plan["meta"]["sparsity"] == pytest.approx(sparsity)
    # FACES scores come from LayerNorm scales that masks do not touch: only the −∞ rule keeps rounds nested
    for earlier, later in zip(plans, plans[1:]):
        for name, group in later["groups"].items():
            assert set(group["keep"]) <= set(earlier["groups"][name]["keep"]), name
    removed = [sum(g["size"] - len(g["keep"]) for g in p["groups"].values()) for p in plans]
    assert removed == sorted(removed) and removed[0] < removed[-1]
    final = json.loads((run / "plan.json").read_text())
    assert {n: g["keep"] for n, g in final["groups"].items()} == {n: g["keep"] for n, g in plans[-1]["groups"].items()}
    assert final["meta"]["rounds"] == 4 and final["meta"]["ramp"] == "cubic"  # recorded as recipes say it
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["round"] for r in metrics["prune_rounds"]] == [2, 3, 4]
    assert [r["after_step"] for r in metrics["prune_rounds"]] == round_steps(4, 20, 0.6)[1:]
    assert "pruned" not in metrics  # no one-shot evaluation of a partly pruned model
    weights = load_file(str(run / "model.safetensors"))
    qkv = weights["blocks.0.attn.qkv.weight"]
    assert qkv.shape[1] == len(final["groups"]["blocks.0.attn_in"]["keep"]) < 32  # physically smaller
    assert metrics["after"]["efficiency/params"] < metrics["before"]["efficiency/params"]


def test_gradual_final_model_equals_masked_model(cli, tmp_path):
    """The physical apply after retraining changes nothing the model computes."""
    masked = copy.deepcopy(RECIPE)
    masked["prune"]["apply"] = "mask"
    code, _o, err, mrun = _run(cli, tmp_path, masked, "masked")
    assert code == 0, err
    code, _o, err, prun = _run(cli, tmp_path, RECIPE, "physical")
    assert code == 0, err
    import corecompress

    physical_model, masked_model = corecompress.load(prun), corecompress.load(mrun)
    assert sum(p.numel() for p in physical_model.parameters()) < sum(p.numel() for p in masked_model.parameters())
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    physical_model.eval(), masked_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(physical_model(x), masked_model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"retrain": None}, "prune.rounds: gradual pruning happens during retraining"),
    ({"prune.rounds": 30}, "prune.rounds: 30 rounds need at least 29 retraining steps"),
    ({"prune.ramp_fraction": 1.0}, "prune.ramp_fraction: must be in (0, 1)"),
    ({"prune.ramp": "cubicc"}, "prune.ramp: unknown schedule 'cubicc'; did you mean 'cubic'?"),
    ({"prune.ramp": {"name": "lineer"}}, "prune.ramp.name: unknown schedule 'lineer'; did you mean 'linear'?"),
    ({"prune.ramp": "cosine"}, "prune.ramp: 'cosine': the ramp decreases from"),  # a learning-rate schedule
    ({"prune.ramp": {"name": "constant", "value": 2.0}}, "prune.ramp: 'constant': the ramp gave 2.0 for round 1"),
    ({"prune.ramp": {"name": "constant", "value": 0.5}}, "prune.ramp: 'constant': the ramp reaches 0.5 at the last"),
    ({"prune.ramp": {"name": "cubic", "power": 2}}, "prune.ramp.power: unknown option"),
    ({"prune.ramp": {"name": "step", "gamma": 1e300, "milestones": [0.1, 0.2]}},
     "prune.ramp: 'step': the ramp failed for round 1 of 4"),  # an overflow, not a traceback
])
def test_gradual_recipe_errors_are_one_line(cli, tmp_path, change, message):
    data = copy.deepcopy(RECIPE)
    for key, value in change.items():
        if "." in key:
            section, field = key.split(".")
            data[section][field] = value
        else:
            data[key] = value
    code, _out, err, run = _run(cli, tmp_path, data)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not run.exists()


def test_gradual_with_a_gradient_importance_on_heads_and_neurons(cli, tmp_path):
    """Taylor scores need data and gradients mid-training; heads and neurons are pruned round by round."""
    data = copy.deepcopy(RECIPE)
    data["prune"].update({"importance": "taylor", "targets": ["heads", "neurons"], "rounds": 3, "ramp": "linear"})
    code, _out, err, run = _run(cli, tmp_path, data)
    assert code == 0, err
    plans = [json.loads((run / f"plan.round{k}.json").read_text()) for k in range(1, 4)]
    assert [p["meta"]["sparsity"] for p in plans] == [0.5 / 3, 0.5 * 2 / 3, 0.5]  # ramp: linear, k/R
    assert json.loads((run / "plan.json").read_text())["meta"]["ramp"] == "linear"
    for earlier, later in zip(plans, plans[1:]):
        for name, group in later["groups"].items():
            assert set(group["keep"]) <= set(earlier["groups"][name]["keep"]), name
    kept_heads = len(plans[-1]["groups"]["blocks.0.heads"]["keep"])
    assert kept_heads == 2  # floor(4 · (1 − 0.5))
    weights = load_file(str(run / "model.safetensors"))
    assert weights["blocks.0.mlp.fc1.weight"].shape[0] == len(plans[-1]["groups"]["blocks.0.mlp_hidden"]["keep"]) == 32


@pytest.mark.parametrize("rounds", [1, 2, 3, 4, 5, 7, 10, 16, 99, 1000])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 1 / 3, 0.5, 0.7, 0.9, 0.95, 0.999])
def test_ramp_schedules_give_bitwise_the_round_sparsities_of_before(sparsity, rounds):
    for shorthand, name in (("cubic", "sparsity_cubic"), ("linear", "sparsity_linear")):
        assert round_sparsities(sparsity, rounds, ramp(name)) == old_round_sparsities(sparsity, rounds, shorthand)


@pytest.mark.parametrize("written, name, label", [
    (None, "sparsity_cubic", "cubic"),  # the default
    ("cubic", "sparsity_cubic", "cubic"),
    ("linear", "sparsity_linear", "linear"),  # not the learning-rate schedule 'linear'
    ({"name": "linear"}, "sparsity_linear", "linear"),
    ("sparsity_cubic", "sparsity_cubic", "cubic"),
])
def test_recipe_ramp_is_a_schedule_choice(written, name, label):
    data = copy.deepcopy(RECIPE)
    if written is None:
        del data["prune"]["ramp"]
    else:
        data["prune"]["ramp"] = written
    registry = load_plugins().registry
    recipe = validate_recipe(data, registry)
    assert recipe.prune.ramp.name == name and ramp_label(recipe.prune.ramp) == label
    again = validate_recipe(json.loads(json.dumps(recipe_to_dict(recipe))), registry)  # recipe.resolved.json
    assert again.prune.ramp.name == name


@dataclass
class StairsOptions:
    levels: int = 2


class Stairs:
    """A third party's step-like ramp: floor(levels · k/R) / levels of the final sparsity."""

    def __init__(self, o: StairsOptions) -> None:
        self.levels = o.levels

    def __call__(self, step: int, total_steps: int) -> float:
        return math.floor(self.levels * step / total_steps) / self.levels


class ThirdPartyRamps:
    @hookimpl
    def register_schedules(self, register):
        register("stairs", Stairs, StairsOptions, description="step-like sparsity ramp")
        register("overshoot", lambda: (lambda k, n: 1.5 if k == 1 else 1.0))
        register("wobble", lambda: (lambda k, n: 0.0 if k == 2 else k / n))
        register("wordy", lambda: (lambda k, n: "all of it"))
        register("not_quite", lambda: (lambda k, n: 0.9 * k / n))


@pytest.fixture(scope="module")
def third_party():
    return load_plugins(extra=[("third_party_ramps", ThirdPartyRamps())])


def test_a_third_party_ramp_by_name_sets_the_round_sparsities(third_party, tmp_path):
    from corecompress.engine.runner import run_recipe

    data = copy.deepcopy(RECIPE)
    data["prune"].update({"importance": "l1", "ramp": {"name": "stairs", "levels": 2}})
    recipe = validate_recipe(data, third_party.registry)
    run_recipe(recipe, third_party, tmp_path / "stairs")
    expected = [0.0, 0.25, 0.25, 0.5]  # 0.5 · floor(2k/4)/2
    assert round_sparsities(0.5, 4, Stairs(StairsOptions())) == expected
    plans = [json.loads((tmp_path / "stairs" / f"plan.round{k}.json").read_text()) for k in range(1, 5)]
    assert [p["meta"]["sparsity"] for p in plans] == expected
    removed = [sum(g["size"] - len(g["keep"]) for g in p["groups"].values()) for p in plans]
    assert removed[0] == 0 and removed[1] == removed[2] < removed[3]
    metrics = json.loads((tmp_path / "stairs" / "metrics.json").read_text())
    assert [r["sparsity"] for r in metrics["prune_rounds"]] == expected[1:]
    final = json.loads((tmp_path / "stairs" / "plan.json").read_text())
    assert final["meta"]["ramp"] == {"name": "stairs", "levels": 2}  # a ramp with options, readably


@pytest.mark.parametrize("name, message", [
    ("overshoot", "prune.ramp: 'overshoot': the ramp gave 1.5 for round 1 of 4; it must be a fraction"),
    ("wobble", "prune.ramp: 'wobble': the ramp decreases from 0.25 (round 1) to 0.0 (round 2) of 4"),
    ("wordy", "prune.ramp: 'wordy': the ramp gave 'all of it' for round 1 of 4; expected a number"),
    ("not_quite", "prune.ramp: 'not_quite': the ramp reaches 0.9 at the last round (4); it must reach 1"),
])
def test_a_ramp_that_is_no_fraction_or_falls_is_refused_at_validation(third_party, name, message):
    data = copy.deepcopy(RECIPE)
    data["prune"]["ramp"] = name
    with pytest.raises(RecipeError) as caught:
        validate_recipe(data, third_party.registry)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    data["prune"]["rounds"] = 1  # one-shot pruning never asks the ramp
    assert validate_recipe(data, third_party.registry).prune.ramp.name == name
