"""Malformed recipes: exit code 2, one line naming the key path, no traceback, no run directory."""
from __future__ import annotations

import copy

import pytest
import yaml

BASE = {
    "version": 1, "name": "t",
    "model": {"name": "tiny_vit"},
    "data": {"name": "synthetic_prototypes", "train_per_class": 4, "test_per_class": 2},
    "prune": {"importance": {"name": "l1"}, "sparsity": 0.5, "targets": ["channels"]},
    "retrain": {"steps": 2, "batch_size": 8},
}


def mutate(path: str, value: object) -> dict:
    recipe = copy.deepcopy(BASE)
    node = recipe
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if value is DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return recipe


DELETE = object()

CASES = [
    # (id, recipe mapping or raw text, expected fragment of the single error line)
    ("unknown-importance", mutate("prune.importance.name", "facez"), "prune.importance.name: unknown importance 'facez'"),
    ("unknown-model", mutate("model.name", "tiny_vitt"), "model.name: unknown model 'tiny_vitt'; did you mean 'tiny_vit'?"),
    ("unknown-key-typo", mutate("prune.sparsty", 0.3), "prune.sparsty: unknown option; did you mean 'sparsity'?"),
    ("unknown-option-of-component", mutate("prune.importance.normalise", "mean"),
     "prune.importance.normalise: unknown option; did you mean 'normalize'?"),
    ("unknown-top-level", mutate("retrian", {"steps": 1}), "retrian: unknown option; did you mean 'retrain'?"),
    ("wrong-type-steps", mutate("retrain.steps", "many"), "retrain.steps: expected an integer"),
    ("wrong-type-bool", mutate("deterministic", "yes please"), "deterministic: expected true or false"),
    ("sparsity-too-high", mutate("prune.sparsity", 1.0), "prune.sparsity: must be in [0.0, 1.0)"),
    ("sparsity-negative", mutate("prune.sparsity", -0.1), "prune.sparsity: must be in [0.0, 1.0)"),
    ("bad-literal", mutate("prune.scope", "globall"), "prune.scope: must be one of 'local', 'global'"),
    ("missing-weights-file", mutate("weights", "/nonexistent/w.safetensors"), "weights: no such file"),
    ("missing-plan-file", mutate("prune.plan", "/nonexistent/plan.json"), "prune.plan: no such file"),
    ("wrong-version", mutate("version", 2), "version: unsupported recipe version 2"),
    ("missing-version", mutate("version", DELETE), "version: missing"),
    ("missing-model", mutate("model", DELETE), "model: required"),
    ("bad-matrix-values", mutate("matrix", {"prune.sparsity": 0.3}), "matrix.prune.sparsity: expected a list"),
    ("bad-matrix-cell", mutate("matrix", {"prune.sparsity": [0.3, 1.5]}), "prune.sparsity: must be in [0.0, 1.0)"),
    ("bad-matrix-name", mutate("matrix", {"prune.importance.name": ["l1", "nope"]}), "prune.importance.name: unknown importance 'nope'"),
    ("component-name-not-string", mutate("model", {"name": 3}), "model.name: expected a string"),
    ("list-expected", mutate("prune.targets", "channels"), "prune.targets: expected a list"),
    ("retrain-steps-zero", mutate("retrain.steps", 0), "retrain.steps: must be at least 1"),
    ("required-plugin-missing", mutate("require", ["no-such-plugin"]), "required plugin 'no-such-plugin' is not installed"),
    ("bad-yaml", "version: 1\nmodel: [tiny_vit\n", "not valid YAML (line"),
    ("not-a-mapping", "- just\n- a list\n", "a recipe is a mapping"),
    ("python-tag-refused", "version: 1\nmodel: !!python/object/apply:os.system ['echo pwned']\n", "not valid YAML"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_recipe_gives_one_line_and_exit_2(case, cli, tmp_path):
    _id, recipe, expected = case
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
    out_dir = tmp_path / "run"
    for command in (("validate", path), ("run", path, "--out", out_dir)):
        code, out, err = cli(*command)
        lines = [ln for ln in err.splitlines() if ln and not ln.startswith("warning:")]
        assert code == 2, (command, code, err)
        assert len(lines) == 1, err
        assert "Traceback" not in err
        assert expected in lines[0], lines[0]
        assert not out_dir.exists(), "a failed validation must not create a run directory"


def test_missing_recipe_file(cli, tmp_path):
    code, _out, err = cli("validate", tmp_path / "nope.yaml")
    assert code == 2 and "no such recipe file" in err


def test_valid_recipe_validates(cli, tmp_path):
    path = tmp_path / "ok.yaml"
    recipe = copy.deepcopy(BASE)
    recipe["matrix"] = {"prune.importance.name": ["l1", "random"], "prune.sparsity": [0.3, 0.5]}
    recipe["seeds"] = [0, 1, 2]
    path.write_text(yaml.safe_dump(recipe))
    code, out, err = cli("validate", path)
    assert code == 0, err
    assert "4 matrix cell(s), 12 run(s)" in out


def test_yaml_floats_without_dot_are_numbers(cli, tmp_path):
    from corecompress.plugin.loading import load_plugins
    from corecompress.config.recipe import validate_recipe

    recipe = copy.deepcopy(BASE)
    recipe["retrain"]["lr"] = "1e-3"  # what YAML 1.1 makes of `lr: 1e-3`
    parsed = validate_recipe(recipe, load_plugins().registry)
    assert parsed.retrain.lr == pytest.approx(1e-3)
