"""Every shipped recipe (recipes/**/*.yaml, benchmarks and base recipes included) validates through
``corecompress validate``, its ``extends`` followed and the plugins loaded as the recipe asks.

Validation checks that input files exist. Inputs a developer machine does not have are pointed at
placeholder files: ``/data/...`` (real-size datasets and weights) and ``runs/...`` (what another
recipe's run writes, e.g. the benchmark teacher). ``../shared/data/...`` is the real shared data,
and a recipe needing it is skipped, saying so, where it is absent.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from corecompress.config.recipe import read_recipe
from tests_shared import with_placeholder_inputs

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(REPO.glob("recipes/**/*.yaml"))


def test_every_recipe_folder_is_covered() -> None:
    names = {str(p.relative_to(REPO)) for p in RECIPES}
    assert {"recipes/smoke.yaml", "recipes/bench/faces_sweep_base.yaml", "recipes/bench/faces_sweep_g.yaml",
            "recipes/bench/distill_base.yaml", "recipes/bench/distill_olivetti.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_shipped_recipe_validates(cli, tmp_path: Path, recipe: Path) -> None:  # noqa: ANN001
    raw = read_recipe(recipe)
    assert "extends" not in raw
    path = tmp_path / recipe.with_suffix(".json").name
    path.write_text(json.dumps(with_placeholder_inputs(raw, tmp_path)))
    code, out, err = cli("validate", path)
    assert code == 0, err
    assert f"valid (recipe '{raw['name']}'" in out
