"""FACES recipes validate (real-size ones with their data paths pointed at files we create) and the
attribute objective trains the FACES head with BCE."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from corecompress.plugin.loading import load_plugins
from corecompress.config.recipe import validate_recipe
from tests_shared import with_placeholder_inputs

REPO = Path(__file__).resolve().parents[2]
REGISTRY = load_plugins().registry


@pytest.mark.parametrize("name", ["faces_swinface_verification", "faces_swinface_attributes"])
def test_real_size_recipes_validate_with_data(name, tmp_path):
    raw = yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text())
    recipe = validate_recipe(with_placeholder_inputs(raw, tmp_path), REGISTRY)
    assert recipe.model.options.preset == "swin_t"
    assert recipe.prune.importance.name == "faces" and recipe.prune.apply.name == "physical"


@pytest.mark.parametrize("name", ["faces_sweep_synthetic", "faces_attributes_synthetic", "quickstart", "smoke",
                                  "compare_smoke"])
def test_cpu_recipes_validate(name):
    validate_recipe(yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text()), REGISTRY)


def test_sweep_covers_the_issue_grid():
    raw = yaml.safe_load((REPO / "recipes" / "faces_sweep_synthetic.yaml").read_text())
    assert raw["matrix"]["prune.sparsity"] == [0.1, 0.3, 0.5, 0.7]
    assert set(raw["matrix"]["prune.importance.name"]) == {"faces", "l1", "random"}


def test_faces_attribute_objective_learns_rendered_attributes(cli, tmp_path):
    recipe = {"version": 1, "name": "attr", "model": {"name": "swinface", "preset": "micro"},
              "data": {"name": "synthetic_faces", "identities": 6, "images_per_identity": 4, "eval_identities": 3,
                       "eval_images_per_identity": 3, "eval_pairs": 10, "image_size": 32},
              "train": {"steps": 30, "batch_size": 12, "lr": 3e-3, "objective": "faces_attributes"},
              "evaluate": ["attributes"],
              "prune": {"importance": "faces", "sparsity": 0.5},
              "retrain": {"steps": 3, "batch_size": 12, "objective": "faces_attributes"}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, _out, err = cli("run", path, "--out", tmp_path / "run")
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    history = metrics["train"]["history"]
    assert history[-1]["bce"] < history[0]["bce"]          # the head + backbone learn the labels
    assert "attributes/synthetic_attributes_mean_accuracy" in metrics["after"]


def test_faces_attribute_objective_is_bce_through_the_faces_head():
    comp = REGISTRY.get("loss", "faces_attributes")
    objective = comp.create(comp.parse({}, "loss"))

    class Ctx:
        model_spec = type("S", (), {"embedding_size": 8})()
        device = torch.device("cpu")
        state: dict = {}

    objective.setup(Ctx())
    objective.eval()
    emb = torch.randn(4, 8)
    target = torch.randint(0, 2, (4, 40)).float()
    parts = objective(emb, {"attributes": target})
    expected = torch.nn.functional.binary_cross_entropy_with_logits(objective.head(emb), target)
    assert torch.allclose(parts["loss"], expected)
    assert objective.artifacts() == {"attribute_head": objective.head}
