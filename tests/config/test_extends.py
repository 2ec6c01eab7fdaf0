"""``extends``: a recipe merged over its base recipes before validation (corecompress/config/recipe.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import corecompress.config.recipe as recipe_module
from corecompress.config.recipe import MAX_EXTENDS_DEPTH, merge_recipes, read_recipe

BASE = {
    "version": 1, "name": "base", "seed": 3,
    "model": {"name": "tiny_vit", "num_outputs": 10},
    "data": {"name": "synthetic_prototypes", "num_classes": 10},
    "train": {"steps": 4, "batch_size": 16, "lr": 3e-3},
    "evaluate": ["accuracy", {"name": "efficiency", "batch_sizes": [8]}],
    "prune": {"importance": "l1", "targets": ["channels", "heads"], "sparsity": 0.5},
    "retrain": {"steps": 2, "batch_size": 16},
}


def write(path: Path, data: object) -> Path:
    """``data`` as YAML in ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def one_error(code: int, out: str, err: str) -> str:
    """The single ``error: ...`` line of a refused command (exit 2, nothing on stdout)."""
    assert code == 2, (code, out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --- merge semantics -------------------------------------------------------------------------------


def test_mappings_merge_recursively_and_other_values_replace(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", {
        "extends": "base.yaml", "name": "child",
        "model": {"num_outputs": 12},                      # nested mapping: merged key by key
        "prune": {"targets": ["neurons"], "importance": {"name": "random"}},  # a list and a name replaced
        "evaluate": ["accuracy"],                          # a list replaced whole, not appended to
        "train": {"lr": 1e-3},
    })
    raw = read_recipe(child)
    assert "extends" not in raw
    assert raw["name"] == "child" and raw["seed"] == 3
    assert raw["model"] == {"name": "tiny_vit", "num_outputs": 12}
    assert raw["prune"] == {"importance": {"name": "random"}, "targets": ["neurons"], "sparsity": 0.5}
    assert raw["evaluate"] == ["accuracy"]
    assert raw["train"] == {"steps": 4, "batch_size": 16, "lr": 1e-3}
    assert list(raw) == list(BASE)                         # the base's key order is kept


def test_null_replaces_a_section(cli, tmp_path: Path) -> None:  # noqa: ANN001
    write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nprune: null\nretrain: null\n")
    raw = read_recipe(child)
    assert raw["prune"] is None and raw["retrain"] is None
    code, out, err = cli("validate", child)
    assert code == 0 and "valid (recipe 'base'" in out, err


def test_a_mapping_replaces_a_scalar_and_back() -> None:
    merged = merge_recipes({"model": "tiny_vit", "data": {"name": "x", "n": 1}},
                           {"model": {"name": "tiny_vit", "depth": 2}, "data": "y"})
    assert merged == {"model": {"name": "tiny_vit", "depth": 2}, "data": "y"}


def test_merging_leaves_both_inputs_alone() -> None:
    base, override = {"a": {"b": 1, "c": [1]}}, {"a": {"b": 2}}
    merged = merge_recipes(base, override)
    assert merged == {"a": {"b": 2, "c": [1]}}
    assert base == {"a": {"b": 1, "c": [1]}} and override == {"a": {"b": 2}}


def test_a_chain_of_two_bases(tmp_path: Path) -> None:
    write(tmp_path / "root.yaml", BASE)
    write(tmp_path / "middle.yaml", {"extends": "root.yaml", "name": "middle", "train": {"steps": 8},
                                     "prune": {"sparsity": 0.3}})
    top = write(tmp_path / "top.yaml", {"extends": "middle.yaml", "train": {"lr": 1e-4}, "seed": 9})
    raw = read_recipe(top)
    assert raw["name"] == "middle" and raw["seed"] == 9
    assert raw["train"] == {"steps": 8, "batch_size": 16, "lr": 1e-4}
    assert raw["prune"]["sparsity"] == 0.3 and raw["prune"]["importance"] == "l1"


def test_a_list_of_bases_merges_left_to_right(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", BASE)
    write(tmp_path / "fast.yaml", {"train": {"steps": 1}, "seed": 1})
    write(tmp_path / "slow.yaml", {"train": {"steps": 100, "lr": 0.5}})
    top = write(tmp_path / "top.yaml", {"extends": ["base.yaml", "fast.yaml", "slow.yaml"], "seed": 2})
    raw = read_recipe(top)
    assert raw["train"] == {"steps": 100, "batch_size": 16, "lr": 0.5} and raw["seed"] == 2


def test_the_same_base_twice_is_no_cycle(tmp_path: Path) -> None:
    """A diamond (two bases sharing one) is fine: only a file extending itself, directly or not, is a cycle."""
    write(tmp_path / "root.yaml", BASE)
    write(tmp_path / "left.yaml", {"extends": "root.yaml", "seed": 5})
    write(tmp_path / "right.yaml", {"extends": "root.yaml", "name": "right"})
    raw = read_recipe(write(tmp_path / "top.yaml", {"extends": ["left.yaml", "right.yaml"]}))
    assert raw["seed"] == 3 and raw["name"] == "right"      # right's copy of root overrides left's seed


def test_paths_are_relative_to_the_extending_file(cli, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    write(tmp_path / "shared" / "base.yaml", BASE)
    write(tmp_path / "shared" / "tuned.yaml", {"extends": "base.yaml", "train": {"steps": 6}})
    write(tmp_path / "base.yaml", {"version": 1, "model": "wrong", "data": "wrong"})  # not this one
    child = write(tmp_path / "exp" / "deep" / "child.yaml", {"extends": "../../shared/tuned.yaml", "name": "deep"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    raw = read_recipe(Path("..") / "exp" / "deep" / "child.yaml")
    assert raw["model"]["name"] == "tiny_vit" and raw["train"]["steps"] == 6 and raw["name"] == "deep"
    code, out, err = cli("validate", child)
    assert code == 0 and "valid (recipe 'deep'" in out, err


def test_a_base_may_be_named_by_an_absolute_path(tmp_path: Path) -> None:
    base = write(tmp_path / "somewhere" / "base.yaml", BASE)
    raw = read_recipe(write(tmp_path / "child.yaml", {"extends": str(base), "name": "abs"}))
    assert raw["name"] == "abs" and raw["model"]["name"] == "tiny_vit"


def test_the_merged_recipe_is_validated(cli, tmp_path: Path) -> None:  # noqa: ANN001
    write(tmp_path / "base.yaml", {**BASE, "prune": {"sparsty": 0.5}})
    code, out, err = cli("validate", write(tmp_path / "child.yaml", {"extends": "base.yaml"}))
    assert "prune.sparsty: unknown option; did you mean 'sparsity'?" in one_error(code, out, err)


def test_a_matrix_in_an_extending_recipe(cli, tmp_path: Path) -> None:  # noqa: ANN001
    """Matrix axes merge key by key like any mapping; an axis's list of values is replaced."""
    write(tmp_path / "base.yaml", {**BASE, "matrix": {"prune.importance.name": ["l1"], "prune.sparsity": [0.3, 0.5]}})
    child = write(tmp_path / "child.yaml", {"extends": "base.yaml", "matrix": {"prune.importance.name": ["random", "l1"]}})
    assert read_recipe(child)["matrix"] == {"prune.importance.name": ["random", "l1"], "prune.sparsity": [0.3, 0.5]}
    code, out, err = cli("validate", child)
    assert code == 0 and "4 matrix cell(s)" in out, err


# --- errors: one line, exit 2 -------------------------------------------------------------------


def test_a_missing_base_names_it_and_the_file_naming_it(cli, tmp_path: Path) -> None:  # noqa: ANN001
    child = write(tmp_path / "sub" / "child.yaml", {"extends": "../bases/nope.yaml", "name": "x"})
    line = one_error(*cli("validate", child))
    assert line == f"error: {child}: extends: no such recipe file: {tmp_path / 'bases' / 'nope.yaml'}"


def test_a_missing_base_deeper_in_the_chain_names_its_own_referrer(cli, tmp_path: Path) -> None:  # noqa: ANN001
    middle = write(tmp_path / "middle.yaml", {"extends": "gone.yaml"})
    line = one_error(*cli("validate", write(tmp_path / "top.yaml", {"extends": "middle.yaml"})))
    assert line == f"error: {middle}: extends: no such recipe file: {tmp_path / 'gone.yaml'}"


def test_a_cycle_names_the_chain(cli, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "a.yaml", {**BASE, "extends": "b.yaml"})
    write(tmp_path / "b.yaml", {"extends": "c.yaml"})
    write(tmp_path / "c.yaml", {"extends": "a.yaml"})
    line = one_error(*cli("validate", "a.yaml"))
    assert line == "error: c.yaml: extends: a cycle of base recipes: a.yaml -> b.yaml -> c.yaml -> a.yaml"


def test_a_recipe_extending_itself_is_a_cycle(cli, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "self.yaml", {**BASE, "extends": "./self.yaml"})
    line = one_error(*cli("validate", "self.yaml"))
    assert line == "error: self.yaml: extends: a cycle of base recipes: self.yaml -> self.yaml"


@pytest.mark.parametrize("value", ["7", "null", "[]", "['']", "[base.yaml, 3]", "{path: base.yaml}", "''"])
def test_extends_of_the_wrong_type(cli, tmp_path: Path, value: str) -> None:  # noqa: ANN001
    write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", f"extends: {value}\nname: x\n")
    line = one_error(*cli("validate", child))
    assert line.startswith(f"error: {child}: extends: expected a recipe path or a non-empty list of paths, got ")


@pytest.mark.parametrize("text, kind", [("[1, 2]\n", "list"), ("just words\n", "str"), ("", "NoneType")])
def test_a_base_that_is_not_a_mapping(cli, tmp_path: Path, text: str, kind: str) -> None:  # noqa: ANN001
    base = write(tmp_path / "base.yaml", text)
    child = write(tmp_path / "child.yaml", {"extends": "base.yaml"})
    line = one_error(*cli("validate", child))
    assert line == f"error: {base}: a base recipe (extended by {child}) is a mapping of sections, got {kind}"


def _chain(tmp_path: Path, bases: int) -> Path:
    """level0.yaml extends level1.yaml ... extends level<bases>.yaml (the only one with content)."""
    write(tmp_path / f"level{bases}.yaml", BASE)
    for i in range(bases):
        write(tmp_path / f"level{i}.yaml", {"extends": f"level{i + 1}.yaml", "seed": i})
    return tmp_path / "level0.yaml"


def test_a_chain_of_the_most_levels_is_read(cli, tmp_path: Path) -> None:  # noqa: ANN001
    top = _chain(tmp_path, MAX_EXTENDS_DEPTH)
    assert read_recipe(top)["seed"] == 0
    code, _out, err = cli("validate", top)
    assert code == 0, err


def test_a_chain_too_deep_is_refused(cli, tmp_path: Path) -> None:  # noqa: ANN001
    top = _chain(tmp_path, MAX_EXTENDS_DEPTH + 1)
    line = one_error(*cli("validate", top))
    assert line.startswith(f"error: {top}: extends: more than {MAX_EXTENDS_DEPTH} levels of base recipes ({top} -> ")
    assert line.endswith(f"{tmp_path / f'level{MAX_EXTENDS_DEPTH}.yaml'} -> ...)")


def test_too_many_base_files_in_all_are_refused(cli, tmp_path: Path) -> None:  # noqa: ANN001
    """A wide recipe (each of its bases naming the same bases again) cannot make one read unbounded."""
    write(tmp_path / "leaf.yaml", BASE)
    write(tmp_path / "wide.yaml", {"extends": ["leaf.yaml"] * 10})
    top = write(tmp_path / "top.yaml", {"extends": ["wide.yaml"] * 10})
    line = one_error(*cli("validate", top))
    assert line == f"error: {top}: extends: more than {recipe_module.MAX_EXTENDS_FILES} base recipe files in all"


def test_the_guards_apply_to_every_base(cli, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    child = write(tmp_path / "child.yaml", {"extends": "base.yaml", "name": "x"})
    base = write(tmp_path / "base.yaml", "version: 1\nmodel: [tiny_vit\n")
    assert "not valid YAML (line 3, column 1)" in one_error(*cli("validate", child))
    write(base, "version: 1\ndescription: " + "[" * 70 + "]" * 70 + "\n")
    assert one_error(*cli("validate", child)) == f"error: {base}: nested too deeply (at most 64 levels)"
    write(base, "version: 1\nevaluate: &loop [accuracy, *loop]\n")
    assert "recursive recipe" in one_error(*cli("validate", child))
    write(base, BASE)
    monkeypatch.setattr(recipe_module, "MAX_RECIPE_BYTES", base.stat().st_size - 1)
    assert one_error(*cli("validate", child)).startswith(f"error: {base}: {base.stat().st_size} bytes is too large")


def test_the_merged_recipe_is_guarded_too(cli, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """Bases each under the value limit can still add up beyond it."""
    for i in range(3):
        write(tmp_path / f"part{i}.yaml", {f"description{i}": list(range(40))})
    child = write(tmp_path / "child.yaml", {"extends": [f"part{i}.yaml" for i in range(3)]})
    monkeypatch.setattr(recipe_module, "MAX_RECIPE_NODES", 100)
    line = one_error(*cli("validate", child))
    assert line.startswith(f"error: {child} (merged with its base recipes): more than 100 values")


# --- runs store the merged recipe ---------------------------------------------------------------


def test_a_run_stores_the_merged_recipe_and_needs_no_base_afterwards(cli, tmp_path: Path) -> None:  # noqa: ANN001
    base = write(tmp_path / "bases" / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", {"extends": "bases/base.yaml", "name": "merged-run",
                                            "train": {"steps": 3}, "evaluate": ["accuracy"]})
    out = tmp_path / "run"
    code, _out, err = cli("run", child, "--out", out)
    assert code == 0, err
    resolved = json.loads((out / "recipe.resolved.json").read_text())
    assert "extends" not in resolved
    assert resolved["name"] == "merged-run" and resolved["seed"] == 3
    assert resolved["train"]["steps"] == 3 and resolved["train"]["batch_size"] == 16  # override + base
    assert resolved["model"]["num_outputs"] == 10 and resolved["prune"]["sparsity"] == 0.5
    assert [e["name"] for e in resolved["evaluate"]] == ["accuracy"]
    base.unlink()                                  # what --resume reads stands on its own
    code, out_text, err = cli("validate", out / "recipe.resolved.json")
    assert code == 0 and "valid (recipe 'merged-run'" in out_text, err
