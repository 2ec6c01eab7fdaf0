"""`corecompress run` end to end on the smoke recipe: artefacts, no overwrite, reload."""
from __future__ import annotations

import json
import re

import pytest
import torch
import yaml

import corecompress


def _small_smoke(repo, tmp_path, **changes):
    recipe = yaml.safe_load((repo / "recipes" / "smoke.yaml").read_text())
    recipe["train"]["steps"] = 20
    recipe["retrain"]["steps"] = 5
    recipe["evaluate"] = ["accuracy", {"name": "efficiency", "batch_sizes": [8]}]
    recipe.update(changes)
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_smoke_run_writes_every_artefact_and_reloads(cli, repo, tmp_path):
    recipe = _small_smoke(repo, tmp_path)
    out = tmp_path / "run"
    code, stdout, err = cli("run", recipe, "--out", out)
    assert code == 0, err
    assert f"report: {out / 'report.md'}" in stdout
    for name in ("recipe.resolved.json", "versions.json", "plan.json", "metrics.json", "report.md",
                 "model.safetensors", "architecture.json", "log.txt", "status.json"):
        assert (out / name).is_file(), name
    resolved = json.loads((out / "recipe.resolved.json").read_text())
    assert resolved["prune"]["importance"] == {"name": "l1", "normalize": "none"}  # defaults filled in
    assert resolved["retrain"]["lr_schedule"]["name"] == "cosine"
    versions = json.loads((out / "versions.json").read_text())
    assert versions["torch"] == torch.__version__ and "builtin" in versions["plugins"]
    assert json.loads((out / "status.json").read_text())["state"] == "complete"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["after"]["efficiency/params"] < metrics["before"]["efficiency/params"]
    assert metrics["after"]["efficiency/macs"] < metrics["before"]["efficiency/macs"]
    assert "efficiency/speedup_vs_dense_b8" in metrics["after"]
    report = (out / "report.md").read_text()
    assert "| efficiency/params |" in report and "physical" in report

    model = corecompress.load(out)  # architecture + plan + safetensors, no recipe, no pickle
    x = torch.randn(2, 3, 16, 16)
    assert model(x).shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) == metrics["after"]["efficiency/params"]


def test_existing_run_directory_is_not_overwritten(cli, repo, tmp_path):
    recipe = _small_smoke(repo, tmp_path, evaluate=[])
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, _out, err = cli("run", recipe, "--out", out)
    assert code == 2 and "already exists" in err and "--force" in err
    assert (out / "precious.txt").read_text() == "keep me"
    code, _out, err = cli("run", recipe, "--out", out, "--force")  # --force replaces runs, nothing else
    assert code == 2 and "not a corecompress run (precious.txt)" in err
    assert (out / "precious.txt").read_text() == "keep me"


def test_same_seed_same_weights(cli, repo, tmp_path):
    from safetensors.torch import load_file

    recipe = _small_smoke(repo, tmp_path, evaluate=[])
    runs = []
    for name in ("a", "b"):
        code, _o, err = cli("run", recipe, "--out", tmp_path / name)
        assert code == 0, err
        runs.append(load_file(str(tmp_path / name / "model.safetensors")))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_masked_run_keeps_size_and_zeros(cli, repo, tmp_path):
    recipe = _small_smoke(repo, tmp_path)
    data = yaml.safe_load(recipe.read_text())
    data["prune"]["apply"] = "mask"
    recipe.write_text(yaml.safe_dump(data))
    out = tmp_path / "masked"
    code, _o, err = cli("run", recipe, "--out", out)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["after"]["efficiency/params"] == metrics["before"]["efficiency/params"]
    assert metrics["after"]["efficiency/nonzero_params"] < metrics["before"]["efficiency/nonzero_params"]
    assert "masked model has the dense model's size and speed" in (out / "report.md").read_text()


def test_progress_lines_when_stderr_is_not_a_terminal_and_quiet_silences_them(cli, repo, tmp_path):
    recipe = _small_smoke(repo, tmp_path, evaluate=[])
    code, _out, err = cli("run", recipe, "--out", tmp_path / "a")  # captured: not a terminal
    assert code == 0, err
    lines = err.splitlines()
    assert "stage train: started" in lines and "stage retrain: started" in lines
    assert any(line.startswith("stage train: done in ") for line in lines)
    assert any(re.fullmatch(r"train step 20/20 lr=\S+ loss=\S+ .*[0-9.e+]+ steps/s, ETA 0:00:00", line) for line in lines), err
    log = (tmp_path / "a" / "log.txt").read_text()
    assert all(line in log for line in lines if line.startswith(("stage ", "train step")))  # the log's words
    code, _out, err = cli("run", recipe, "--out", tmp_path / "b", "--quiet")
    assert code == 0 and err == ""


@pytest.mark.parametrize("args", [("plugins",), ("options", "schedule", "cosine")])
def test_a_closed_pipe_ends_quietly(args):
    """``corecompress plugins | head -1``: the reader goes away; no "error: Broken pipe", exit 141."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "corecompress", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command has written anything: its first write meets a closed pipe
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 141 and b"Broken pipe" not in err and b"Traceback" not in err, err
