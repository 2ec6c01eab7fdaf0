"""Faults survived: SIGKILL at random points of a run (training, a checkpoint write, evaluation, torchrun
with 2 gloo processes), resumed each time, ends bitwise equal to an uninterrupted run; a full disk
during a checkpoint write is one line, exit 1, the previous checkpoint intact and resumable."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file, save_file

from corecompress import hookimpl
from corecompress.engine.checkpoint import verify_checkpoint
from corecompress.testing.chaos import chaos, chaos_recipe, choose_kills, compare_runs, timeline

RECIPE = chaos_recipe()  # train with a margin head -> physical pruning -> AdaDistill from the unpruned teacher


def test_kill_points_cover_training_checkpoints_and_evaluation_in_run_order():
    events = timeline(RECIPE)
    assert events[:4] == [{"kind": "step", "phase": "train", "step": 1}, {"kind": "step", "phase": "train", "step": 2},
                          {"kind": "step", "phase": "train", "step": 3},
                          {"kind": "checkpoint", "phase": "train", "step": 3}]
    assert {"kind": "evaluate", "stage": "evaluate_pruned"} in events and events[-1]["stage"] == "evaluate_after"
    kills = choose_kills(RECIPE, 4, seed=1)
    assert {k["kind"] for k in kills} == {"step", "checkpoint", "evaluate"}
    assert [events.index(k) for k in kills] == sorted(events.index(k) for k in kills)  # in run order


def test_sigkill_at_random_points_then_resume_is_bitwise_exact(tmp_path):
    report = chaos(tmp_path, RECIPE, kills=4, seed=0)
    assert report.exit_codes[:-1] == [-signal.SIGKILL] * 4 and report.exit_codes[-1] == 0
    assert report.differences == [] and report.survived == 4
    status = json.loads((tmp_path / "killed" / "status.json").read_text())
    assert status["state"] == "complete" and status["resumes"] == 4
    centres = load_file(str(tmp_path / "killed" / "checkpoints" / "retrain-step0000008" / "objective.safetensors"))
    assert any("centres" in k for k in centres)  # AdaDistill's class centres were among the compared tensors


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available")
def test_sigkill_of_a_torchrun_rank_then_resume_is_bitwise_exact(tmp_path):
    report = chaos(tmp_path, RECIPE, kills=2, seed=4, ranks=2)
    assert all(code != 0 for code in report.exit_codes[:-1]) and report.exit_codes[-1] == 0
    assert report.differences == [] and report.survived == 2


def test_the_comparison_finds_a_changed_tensor(tmp_path):
    base = tmp_path / "a"
    (base / "checkpoints" / "retrain-step0000002").mkdir(parents=True)
    save_file({"w": torch.zeros(3)}, str(base / "model.safetensors"))
    save_file({"centres": torch.zeros(2, 2)}, str(base / "checkpoints" / "retrain-step0000002" / "objective.safetensors"))
    (base / "metrics.json").write_text(json.dumps({"retrain": {"seconds": 1.0, "final_loss": 0.5}}))
    other = tmp_path / "b"
    shutil.copytree(base, other)
    (other / "metrics.json").write_text(json.dumps({"retrain": {"seconds": 9.0, "final_loss": 0.5}}))
    assert compare_runs(base, other) == []  # timings do not count
    save_file({"centres": torch.ones(2, 2)}, str(other / "checkpoints" / "retrain-step0000002" / "objective.safetensors"))
    (other / "metrics.json").write_text(json.dumps({"retrain": {"seconds": 9.0, "final_loss": 0.6}}))
    assert compare_runs(base, other) == ["metrics.json differs", "retrain-step0000002/objective.safetensors: centres differs"]


@pytest.fixture
def small_filesystem(tmp_path):
    """A 64 MiB tmpfs of its own (root only), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", f"chaos-{uuid.uuid4().hex[:8]}", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or done.returncode}); the full-disk "
                    "path is still covered by tests/engine/test_faults.py with a simulated ENOSPC")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


class FillTheDisk:
    """After train step 4 (the step-3 checkpoint is written) fill the run's filesystem to the last byte."""

    def __init__(self, filler: Path) -> None:
        self.filler, self.phase = filler, None

    @hookimpl
    def on_stage_start(self, run, stage):
        self.phase = stage

    @hookimpl
    def after_optimizer_step(self, run, step, model):
        if self.phase == "train" and step + 1 == 4 and not self.filler.exists():
            fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT)
            try:
                for chunk in (1 << 20, 4096, 1):  # unbuffered: down to the last byte
                    try:
                        while True:
                            os.write(fd, b"\0" * chunk)
                    except OSError:
                        continue
            finally:
                os.close(fd)


def test_the_disk_filling_during_a_checkpoint_write_keeps_the_previous_one(cli, tmp_path, small_filesystem,
                                                                           monkeypatch):
    import corecompress.plugin.loading as loading

    filler = small_filesystem / "filler.bin"
    real = loading.load_plugins
    monkeypatch.setattr(loading, "load_plugins",
                        lambda **kw: real(**{**kw, "extra": [*kw.get("extra", ()), ("fill", FillTheDisk(filler))]}))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    out = small_filesystem / "run"
    code, _out, err = cli("run", recipe, "--out", out)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert lines[-1] == (f"error: cannot write checkpoint {out / 'checkpoints' / 'train-step0000006'}: "
                         "No space left on device; the previous checkpoint is kept"), err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["train-step0000003"]  # no partial copy
    verify_checkpoint(out / "checkpoints" / "train-step0000003")

    filler.unlink()  # space freed: the run resumes from the step-3 checkpoint and finishes
    monkeypatch.setattr(loading, "load_plugins", real)
    code, _out, err = cli("run", "--resume", out)
    assert code == 0, err
    assert "train: resumed at step 3 of 8" in (out / "log.txt").read_text()
