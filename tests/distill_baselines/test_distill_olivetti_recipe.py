"""recipes/bench/distill_olivetti.yaml (dlib ResNet → small student on Olivetti) validates and covers issue 5 #2."""
from __future__ import annotations

from pathlib import Path

import yaml

from corecompress.plugin.loading import load_plugins
from corecompress.config.recipe import validate_recipe
from tests_shared import SHARED_DATA, shared_file

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "bench" / "distill_olivetti.yaml"


def _at_shared_data(node):
    """The recipe's ../shared/data/... paths (relative to the repository root) pointed at SHARED_DATA."""
    if isinstance(node, dict):
        return {k: _at_shared_data(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_at_shared_data(v) for v in node]
    if isinstance(node, str) and node.startswith("../shared/data/"):
        return str(SHARED_DATA / node[len("../shared/data/"):])
    return node


def test_distill_olivetti_recipe_validates() -> None:
    shared_file("olivetti/olivettifaces.mat")
    shared_file("face-api-resnet/face_recognition_model-weights_manifest.json")
    raw = yaml.safe_load(RECIPE.read_text())
    recipe = validate_recipe(_at_shared_data(raw), load_plugins().registry)
    assert recipe.teacher.model.name == "dlib_resnet" and recipe.model.options.embedding_size == 128
    assert recipe.data.options.train_identities == 30 and len(recipe.seeds) >= 3
    methods = raw["matrix"]["retrain.objective"]
    assert [(m["name"], m.get("variant")) for m in methods] == [
        ("arcface", None), ("feature_mse", None), ("arcdistill", None), ("hinton_kd", None),
        ("adadistill", "plain"), ("adadistill", "weighted")]
    assert all(m["header"] == "class_means" for m in methods if m["name"] in ("arcdistill", "hinton_kd"))
    assert {(m["s"], m["m"]) for m in methods} == {(32, 0.3)}          # one margin setting for every method
