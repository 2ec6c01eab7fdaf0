"""The example third-party package, installed separately, joins through the entry-point group."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml


@pytest.fixture(scope="module")
def example_site(tmp_path_factory, repo_root=None):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(repo / "tests" / "example_plugin")],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"installing the example plugin failed: {proc.stderr[-2000:]}")
    return target


def _env(site):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_example_plugin_is_listed(example_site):
    proc = subprocess.run([sys.executable, "-m", "corecompress", "plugins", "--json"], capture_output=True,
                          text=True, env=_env(example_site), timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["example"]["distribution"] == "corecompress-example"
    assert rows["example"]["version"] == "0.2.0"
    assert {"kind": "importance", "name": "example_norm_ratio"} in rows["example"]["components"]


def test_example_importance_runs_from_a_recipe(example_site, tmp_path):
    recipe = {"version": 1, "name": "example", "require": ["corecompress-example"],
              "model": "tiny_vit", "data": {"name": "synthetic_prototypes", "train_per_class": 4},
              "prune": {"importance": {"name": "example_norm_ratio", "power": 2.0}, "sparsity": 0.5,
                        "targets": ["heads", "neurons"]},
              "retrain": {"steps": 2, "batch_size": 8}, "evaluate": ["accuracy"]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "corecompress", "run", str(path), "--out", str(out)],
                          capture_output=True, text=True, env=_env(example_site), timeout=600)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert plan["meta"]["importance"] == "example_norm_ratio"
    assert all(len(g["keep"]) == g["size"] // 2 for g in plan["groups"].values())
    # without the package the same recipe is a clear user error
    proc = subprocess.run([sys.executable, "-m", "corecompress", "validate", str(path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "required plugin 'corecompress-example' is not installed" in proc.stderr


def test_the_example_plugins_own_tests_pass_with_pytest(example_site, tmp_path):
    """``pytest`` in the example package, with it installed — and beside it another plugin whose name
    clashes with a built-in one, which must not break this author's test run."""
    from pathlib import Path

    from tests_shared import CLASHING_L1, fake_distribution

    package = Path(__file__).resolve().parents[1] / "example_plugin"
    clash = tmp_path / "clash"
    clash.mkdir()
    fake_distribution(clash, "thirdparty-clash", {"clash": CLASHING_L1})
    env = _env(example_site)
    env["PYTHONPATH"] = f"{clash}{os.pathsep}{env['PYTHONPATH']}"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=package,
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "4 passed" in proc.stdout
    assert "importance 'l1' is registered by" in proc.stdout  # the clash is a warning in the summary


def test_the_docs_contract_check_example_is_the_example_plugins_own_test():
    """docs/plugins.md's example is not prose that can rot: it is the start of the tests run above."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    doc = (repo / "docs" / "plugins.md").read_text()
    example = doc.split("## Checking it")[1].split("```python\n")[1].split("```")[0]
    tests = (repo / "tests" / "example_plugin" / "tests" / "test_example.py").read_text()
    assert "contract_checks.check(" in example and example in tests
