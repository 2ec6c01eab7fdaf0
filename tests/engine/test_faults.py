"""Faults during training: a NaN loss (stop or skip), a full disk while checkpointing, and Ctrl-C.

Each leaves the last good checkpoint usable and says what happened in one line; Ctrl-C writes a
checkpoint of the current step, exits with 130, and ``--resume`` then finishes with the weights of
an uninterrupted run.
"""
from __future__ import annotations

import errno
import json
import math
import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import corecompress.engine.checkpoint as checkpoint
from corecompress.engine.checkpoint import verify_checkpoint
from corecompress import hookimpl
from tests_shared import AtCallsOptions, NanAt, run_until_checkpoint

RECIPE = {
    "version": 1, "name": "faults", "seed": 5, "threads": 1, "deterministic": True,
    "model": {"name": "tiny_vit", "num_outputs": 10},
    "data": {"name": "synthetic_prototypes", "num_classes": 10, "train_per_class": 8},
    "train": {"steps": 20, "batch_size": 16, "lr": 3e-3, "checkpoint_every": 5, "log_every": 5},
    "evaluate": [],
    "prune": {"importance": "l1", "targets": ["channels", "neurons"], "sparsity": 0.5, "apply": "physical"},
    "retrain": {"steps": 20, "batch_size": 16, "lr": 1e-3, "checkpoint_every": 5, "log_every": 5},
}


class NanPlugin:
    @hookimpl
    def register_losses(self, register):
        register("nan_at", NanAt, AtCallsOptions)


def write_recipe(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def with_nan_plugin(monkeypatch):
    """Make the CLI load the test's NaN loss as an in-process plugin."""
    import corecompress.plugin.loading as plugins

    load = plugins.load_plugins
    monkeypatch.setattr(plugins, "load_plugins",
                        lambda **kw: load(**{**kw, "extra": [*kw.get("extra", ()), ("nan_plugin", NanPlugin())]}))


def test_nan_loss_stops_naming_the_step_and_keeps_last_checkpoint(cli, tmp_path, with_nan_plugin):
    data = {**RECIPE, "train": {**RECIPE["train"], "objective": {"name": "nan_at", "steps": [8]}}}
    out = tmp_path / "run"
    code, _out, err = cli("run", write_recipe(tmp_path, data), "--out", out, "--quiet")
    assert code == 2
    lines = err.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("error: train: loss is nan at step 8 of 20; stopped")
    assert "nonfinite: skip" in lines[0]
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["train-step0000005"]
    verify_checkpoint(out / "checkpoints" / "train-step0000005")
    saved = load_file(str(out / "checkpoints" / "train-step0000005" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in saved.values())
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and "step 8" in status["error"]
    assert not (out / "model.safetensors").exists()


def test_nan_loss_skip_skips_only_those_steps(cli, tmp_path, with_nan_plugin):
    data = {**RECIPE, "retrain": None, "prune": None,
            "train": {**RECIPE["train"], "nonfinite": "skip", "objective": {"name": "nan_at", "steps": [3, 11]}}}
    out = tmp_path / "run"
    code, _out, err = cli("run", write_recipe(tmp_path, data), "--out", out, "--quiet")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["skipped_steps"] == 2
    log = (out / "log.txt").read_text()
    assert "train step 3: loss is nan; step skipped (1 so far)" in log
    assert "train step 11: loss is nan; step skipped (2 so far)" in log
    final = load_file(str(out / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in final.values())


def test_skipped_step_is_not_logged_or_stepped_but_still_checkpointed(cli, tmp_path, with_nan_plugin):
    """A skipped step on a log and checkpoint step: no log record, no optimizer step, the checkpoint
    still written (counting the skip, keeping the last finite loss)."""
    data = {**RECIPE, "retrain": None, "prune": None,
            "train": {**RECIPE["train"], "nonfinite": "skip", "objective": {"name": "nan_at", "steps": [15]}}}
    out = tmp_path / "run"
    code, _out, err = cli("run", write_recipe(tmp_path, data), "--out", out)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())["train"]
    assert [r["step"] for r in metrics["history"]] == [5, 10, 20]
    assert metrics["skipped_steps"] == 1 and math.isfinite(metrics["final_loss"])
    log = (out / "log.txt").read_text()
    assert "train step 15: loss is nan; step skipped (1 so far)" in log and "train step 15/20" not in log
    ckpt = out / "checkpoints" / "train-step0000015"
    info = json.loads((ckpt / "info.json").read_text())
    assert info["skipped"] == 1 and [r["step"] for r in info["history"]] == [5, 10]
    assert math.isfinite(info["last_loss"])
    optimizer = load_file(str(ckpt / "optimizer.safetensors"))
    assert int(optimizer["t.state.0.step"]) == 14  # AdamW stepped on the 14 finite steps only


def test_disk_full_while_checkpointing_keeps_previous_and_exits_1(cli, tmp_path, monkeypatch):
    real_save = checkpoint.write_tensors

    def full_disk(tensors, filename, metadata=None):
        if ".train-step0000010.tmp" in str(filename) and str(filename).endswith("model.safetensors"):
            Path(filename).write_bytes(b"\0" * 100)  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "write_tensors", full_disk)
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path, RECIPE)
    code, _out, err = cli("run", recipe, "--out", out, "--quiet")
    assert code == 1
    assert err.strip().count("\n") == 0
    assert err.startswith(f"error: cannot write checkpoint {out / 'checkpoints' / 'train-step0000010'}: "
                          "No space left on device; the previous checkpoint is kept")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["train-step0000005"]  # no temp left behind
    verify_checkpoint(out / "checkpoints" / "train-step0000005")
    assert json.loads((out / "status.json").read_text())["state"] == "failed"

    monkeypatch.setattr(checkpoint, "write_tensors", real_save)  # space freed: the run continues
    code, _out, err = cli("run", "--resume", out)
    assert code == 0, err
    assert "train: resumed at step 5 of 20" in (out / "log.txt").read_text()




def test_ctrl_c_checkpoints_current_step_exits_130_and_resumes_exactly(cli, tmp_path):
    recipe = write_recipe(tmp_path, RECIPE)
    reference = tmp_path / "reference"
    code, _out, err = cli("run", recipe, "--out", reference)
    assert code == 0, err

    out = tmp_path / "interrupted"
    done = run_until_checkpoint(tmp_path, recipe, out, "retrain", signal.SIGINT, delay=0.1)
    stderr = done.stderr
    assert done.returncode == 130, stderr
    lines = [x for x in stderr.splitlines() if x.startswith("interrupted")]  # the progress lines aside
    assert len(lines) == 1, stderr  # one line says it all
    line = lines[0]
    assert line.startswith("interrupted (retrain: interrupted at step")
    assert line.endswith(f"; continue with: corecompress run --resume {out}")
    step = int(line.split("interrupted at step ")[1].split()[0])
    assert 5 <= step < 20
    verify_checkpoint(out / "checkpoints" / f"retrain-step{step:07d}")  # written at the step Ctrl-C stopped at
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "interrupted"
    assert not (out / "model.safetensors").exists()

    code, _out, err = cli("run", "--resume", out)
    assert code == 0, err
    assert f"retrain: resumed at step {step} of 20" in (out / "log.txt").read_text()
    a, b = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "status.json").read_text())["resumed_from_state"] == "interrupted"
