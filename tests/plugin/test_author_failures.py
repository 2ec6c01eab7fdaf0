"""What a third-party plugin author meets when their plugin is broken: never a silent failure, never a
traceback — one line naming the plugin, the component and expected vs actual, before anything trains.

Each broken plugin is a distribution installed into a scratch site (``tests_shared.fake_distribution``).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from corecompress.errors import PluginError
from corecompress.plugin.loading import PluginWarning, load_plugins
from tests_shared import CLASHING_L1, fake_distribution

SCORES = """
import torch
from corecompress import hookimpl

def make(score):
    class Imp:
        declined = {}
        def score(self, model, groups, ctx):
            out = {g.name: score(g) for g in groups[:1 if score is partial else None]}
            self.declined = {g.name: "not a kind this criterion understands" for g in groups if g.name not in out}
            return out
    return Imp

def partial(g):
    return torch.ones(g.size)

@hookimpl
def register_importances(register):
    register("wrong_shape", make(lambda g: torch.ones(g.size, 3)))
    register("as_list", make(lambda g: [1.0] * g.size))
    register("nan_scores", make(lambda g: torch.full((g.size,), float("nan"))))
    register("partial", make(partial))
    register("partial_declared", make(partial), declines_groups=True)
    register("needs_data", make(lambda g: torch.ones(g.size)), needs={"data"})
    register("crashes", make(lambda g: torch.ones(g.size) @ torch.ones(3, 3)))
"""

LOSSES = """
import torch
import torch.nn.functional as F
from corecompress import hookimpl

class CosineKD(torch.nn.Module):
    def forward(self, outputs, batch, teacher_outputs=None):
        loss = 1 - F.cosine_similarity(outputs, teacher_outputs).mean()
        return {"loss": loss}

class NotScalar(torch.nn.Module):
    def forward(self, outputs, batch, teacher_outputs=None):
        return {"loss": F.cross_entropy(outputs, batch["label"], reduction="none")}

class Detached(torch.nn.Module):
    def forward(self, outputs, batch, teacher_outputs=None):
        return {"loss": F.cross_entropy(outputs.detach(), batch["label"])}

class Crashes(torch.nn.Module):
    def forward(self, outputs, batch, teacher_outputs=None):
        return {"loss": outputs @ torch.ones(3, 3)}

@hookimpl
def register_losses(register):
    register("crashes", Crashes)
    register("cosine_kd", CosineKD, needs={"teacher"})
    register("not_scalar", NotScalar)
    register("detached", Detached)
"""

BASE = {"version": 1, "name": "author", "threads": 1, "model": "tiny_vit",
        "data": {"name": "synthetic_prototypes", "train_per_class": 4}, "evaluate": []}


def _recipe(tmp_path, **sections):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**BASE, **sections}))
    return path


def _prune(importance, **extra):
    return {"importance": importance, "sparsity": 0.5, "targets": ["heads", "neurons"], **extra}


@pytest.fixture
def broken_site(site):
    fake_distribution(site, "thirdparty-scores", {"scores": SCORES})
    fake_distribution(site, "thirdparty-losses", {"losses": LOSSES})
    return site


@pytest.mark.parametrize("importance, expected", [
    ("wrong_shape", r"score\(\) gave group \S+ scores of shape \((\d+), 3\); expected shape \(\1,\), one score per unit"),
    ("as_list", r"score\(\) gave group \S+ a list; expected a torch.Tensor of shape \(\d+,\)"),
    ("nan_scores", r"score\(\) gave group \S+ non-finite scores \(NaN or inf\)"),
    ("partial", r"score\(\) scored 1 of \d+ groups; missing .*register\(\.\.\., declines_groups=True\)"),
])
def test_a_broken_importance_stops_before_training_naming_plugin_and_expected(cli, broken_site, tmp_path,
                                                                             importance, expected):
    import re

    recipe = _recipe(tmp_path, train={"steps": 3, "batch_size": 8}, prune=_prune(importance),
                     retrain={"steps": 1, "batch_size": 8})
    out = tmp_path / "run"
    code, _out, err = cli("run", recipe, "--out", out)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: importance '{importance}' (plugin 'scores', distribution 'thirdparty-scores'): ")
    assert re.search(expected, lines[0]), lines[0]
    log = (out / "log.txt").read_text()
    assert "stage train: started" not in log  # found by the pre-flight, before any training step
    # without a training phase the real scoring is checked the same way (no plan-stage traceback)
    recipe = _recipe(tmp_path, prune=_prune(importance), retrain={"steps": 1, "batch_size": 8})
    code, _out, err = cli("run", recipe, "--out", tmp_path / "run2")
    assert code == 2 and "Traceback" not in err and re.search(expected, err), err
    assert "stage score: started" in (tmp_path / "run2" / "log.txt").read_text()


def test_an_importance_crashing_while_scoring_is_one_line_naming_it(cli, broken_site, tmp_path):
    recipe = _recipe(tmp_path, prune=_prune("crashes"), retrain={"steps": 1, "batch_size": 8})  # nothing trains first
    code, _out, err = cli("run", recipe, "--out", tmp_path / "run")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: prune.importance: importance 'crashes' (plugin 'scores', distribution "
                               "'thirdparty-scores') failed while scoring the model: RuntimeError: "), lines[0]


def test_an_importance_that_declares_it_declines_groups_leaves_them_unpruned_and_says_so(cli, broken_site, tmp_path):
    recipe = _recipe(tmp_path, prune=_prune("partial_declared"))
    out = tmp_path / "run"
    code, _out, err = cli("run", recipe, "--out", out)
    assert code == 0, err
    plan = json.loads((out / "plan.json").read_text())
    assert len(plan["groups"]) == 1
    unpruned = plan["meta"]["unpruned_groups"]
    assert unpruned and all(why == "not a kind this criterion understands" for why in unpruned.values())
    assert f"importance 'partial_declared' left {len(unpruned)} of {len(unpruned) + 1} groups unpruned" in err
    report = (out / "report.md").read_text()
    assert f"left unpruned: {len(unpruned)} groups the importance declined" in report
    assert f"`{next(iter(unpruned))}` (not a kind this criterion understands)" in report


def test_a_teacher_needing_loss_without_teacher_is_refused_at_validate(cli, broken_site, tmp_path):
    recipe = _recipe(tmp_path, retrain={"steps": 1, "batch_size": 8, "objective": "cosine_kd"})
    code, _out, err = cli("validate", recipe)
    assert code == 2 and err.strip() == ("error: retrain.objective: 'cosine_kd' needs a teacher; add a 'teacher:' "
                                         "section (teacher: {} = the model as it is before pruning)")
    recipe = _recipe(tmp_path, teacher={}, retrain={"steps": 1, "batch_size": 8, "objective": "cosine_kd"})
    code, _out, err = cli("run", recipe, "--out", tmp_path / "run")
    assert code == 0, err


def test_a_data_needing_importance_without_calibration_data_is_refused_at_validate(cli, broken_site, tmp_path):
    recipe = _recipe(tmp_path, prune=_prune("needs_data", calibration_batches=0))
    out = tmp_path / "run"
    code, _out, err = cli("run", recipe, "--out", out)
    assert code == 2 and err.strip() == ("error: prune.calibration_batches: 'needs_data' needs calibration data; "
                                         "set at least 1")
    assert not out.exists()


@pytest.mark.parametrize("objective, expected", [
    ("not_scalar", r"'loss' has shape \(4,\); expected a scalar \(shape \(\)\)"),
    ("detached", r"'loss' does not require grad"),
    ("crashes", r"failed on stand-in inputs of this run's shapes: RuntimeError: mat1 and mat2 shapes cannot be"),
])
def test_a_broken_loss_stops_before_training(cli, broken_site, tmp_path, objective, expected):
    import re

    recipe = _recipe(tmp_path, train={"steps": 2, "batch_size": 8},
                     retrain={"steps": 1, "batch_size": 8, "objective": objective}, prune=_prune("l1"))
    out = tmp_path / "run"
    code, _out, err = cli("run", recipe, "--out", out)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: retrain.objective: loss '{objective}' (plugin 'losses', "
                               "distribution 'thirdparty-losses')")
    assert re.search(expected, lines[0]), lines[0]
    assert "stage train: started" not in (out / "log.txt").read_text()


def test_a_duplicate_name_leaves_every_command_working_and_says_how_to_block(cli, site, tmp_path, monkeypatch):
    fake_distribution(site, "thirdparty-dup", {"dup": CLASHING_L1})
    with pytest.warns(PluginWarning) as record:
        code, out, err = cli("plugins")
    assert code == 0 and "importance/l1  [conflict: unusable]" in out
    assert ("conflict: importance 'l1' is registered by plugin 'builtin' (corecompress) and plugin 'dup' "
            "(thirdparty-dup), so it cannot be used; block one of them: CORECOMPRESS_BLOCK_PLUGINS=dup (or =builtin) "
            "in the environment, or 'plugins: {block: [dup]}' in the recipe") in out
    assert [str(w.message).split(",")[0] for w in record] == [
        "importance 'l1' is registered by plugin 'builtin' (corecompress) and plugin 'dup' (thirdparty-dup)"]
    code, out, _err = cli("plugins", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert any("conflict" in c for c in rows["dup"]["components"])
    assert cli("validate", _recipe(tmp_path, prune=_prune("l2")))[0] == 0  # other components still work
    uses_l1 = _recipe(tmp_path, prune=_prune("l1"))
    code, _out, err = cli("validate", uses_l1)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "CORECOMPRESS_BLOCK_PLUGINS=dup" in lines[0]
    assert "'plugins: {block: [dup]}'" in lines[0]
    # exactly what the message says works, both ways
    blocked = tmp_path / "blocked.yaml"
    blocked.write_text(yaml.safe_dump({**BASE, "prune": _prune("l1"), "plugins": {"block": ["dup"]}}))
    assert cli("validate", blocked)[0] == 0
    monkeypatch.setenv("CORECOMPRESS_BLOCK_PLUGINS", "dup")
    assert cli("validate", uses_l1)[0] == 0
    monkeypatch.setenv("CORECOMPRESS_BLOCK_PLUGINS", "builtin")
    assert load_plugins(require=["dup"]).registry.get("importance", "l1").plugin == "dup"


def test_a_plugin_failing_to_import_warns_once_with_file_and_line(cli, site, tmp_path):
    fake_distribution(site, "thirdparty-broken", {"broken": "import torch\n\nraise RuntimeError('boom at import')\n"})
    with pytest.warns(PluginWarning) as record:
        load_plugins()
        load_plugins()
    texts = [str(w.message) for w in record if "broken" in str(w.message)]
    assert len(texts) == 1, texts
    assert "plugin 'broken' failed to import: RuntimeError: boom at import (" in texts[0]
    assert f"{site / 'thirdparty_broken_broken.py'}, line 3; distribution 'thirdparty-broken'); it is skipped" in texts[0]
    assert "--debug or CORECOMPRESS_DEBUG_TRACEBACK=1 shows the traceback" in texts[0]
    with pytest.raises(PluginError, match=r"^plugin 'broken' failed to import: RuntimeError: boom at import \(.*line 3"):
        load_plugins(strict=True)
    code, _out, err = cli("validate", "--strict", _recipe(tmp_path))
    assert code == 2 and err.startswith("error: plugin 'broken' failed to import: RuntimeError: boom at import (")
    code, _out, err = cli("plugins")
    assert code == 0 and "Traceback" not in err


def test_debug_prints_the_import_traceback(site, tmp_path):
    fake_distribution(site, "thirdparty-broken", {"broken": "import no_such_module_anywhere\n"})
    env = {**__import__("os").environ, "PYTHONPATH": f"{site}:{':'.join(sys.path)}"}
    env.pop("CORECOMPRESS_DEBUG_TRACEBACK", None)
    plain = subprocess.run([sys.executable, "-m", "corecompress", "plugins"], capture_output=True, text=True, env=env,
                           timeout=300)
    debug = subprocess.run([sys.executable, "-m", "corecompress", "--debug", "plugins"], capture_output=True,
                           text=True, env=env, timeout=300)
    assert plain.returncode == debug.returncode == 0
    assert "Traceback" not in plain.stderr and plain.stderr.count("failed to import") == 1
    assert "ModuleNotFoundError: No module named 'no_such_module_anywhere'" in plain.stderr
    assert "thirdparty_broken_broken.py, line 1" in plain.stderr
    assert "Traceback (most recent call last)" in debug.stderr and 'thirdparty_broken_broken.py", line 1' in debug.stderr
