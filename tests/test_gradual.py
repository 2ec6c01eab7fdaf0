"""Gradual pruning (Zhu & Gupta 2018): the cubic ramp, monotone rounds under soft masks, the final
physical apply of the last round's plan, and the recipe errors around it."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from corecompress.pruning.gradual import plan_from_masks, round_sparsities, round_steps
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


def test_cubic_ramp_and_round_steps():
    assert round_sparsities(0.5, 4, "cubic") == pytest.approx([0.5 * (1 - 0.75 ** 3), 0.5 * (1 - 0.5 ** 3),
                                                               0.5 * (1 - 0.25 ** 3), 0.5])
    assert round_sparsities(0.6, 3, "linear") == pytest.approx([0.2, 0.4, 0.6])
    assert round_sparsities(0.3, 1) == [0.3]
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
    expected = round_sparsities(0.5, 4, "cubic")
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
    assert final["meta"]["rounds"] == 4
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
    ({"prune.ramp": "cubicc"}, "prune.ramp"),
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
    for earlier, later in zip(plans, plans[1:]):
        for name, group in later["groups"].items():
            assert set(group["keep"]) <= set(earlier["groups"][name]["keep"]), name
    kept_heads = len(plans[-1]["groups"]["blocks.0.heads"]["keep"])
    assert kept_heads == 2  # floor(4 · (1 − 0.5))
    weights = load_file(str(run / "model.safetensors"))
    assert weights["blocks.0.mlp.fc1.weight"].shape[0] == len(plans[-1]["groups"]["blocks.0.mlp_hidden"]["keep"]) == 32
