"""Exact resume: a run killed or crashed mid-training and continued with ``--resume`` ends with the
same weights, bit for bit, as a run that was never interrupted — in the first training phase, in
retraining after a physical prune, with soft masks, with a margin head and AdaDistill centres, with
dropout (generator state), and when the newest checkpoint is damaged (the previous one is used)."""
from __future__ import annotations

import copy
import json
import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from corecompress.engine.checkpoint import CheckpointWarning
from tests_shared import run_until_checkpoint
from corecompress import hookimpl

RECIPE = {
    "version": 1, "name": "resume", "seed": 3, "threads": 1, "deterministic": True,
    "model": {"name": "tiny_vit", "num_outputs": 10},
    "data": {"name": "synthetic_prototypes", "num_classes": 10, "train_per_class": 8},
    "train": {"steps": 30, "batch_size": 16, "lr": 3e-3, "checkpoint_every": 5, "log_every": 5},
    "evaluate": [],
    "prune": {"importance": "l1", "targets": ["channels", "heads", "neurons"], "sparsity": 0.5, "apply": "physical"},
    "retrain": {"steps": 20, "batch_size": 16, "lr": 1e-3, "checkpoint_every": 5, "log_every": 5},
}



def write_recipe(tmp_path: Path, data: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"tensors differ after resume: {different[:5]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of RECIPE."""
    from corecompress.tools.cli import main

    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "run"
    assert main(["run", str(write_recipe(tmp, RECIPE)), "--out", str(out)]) == 0
    return out


def test_sigkill_mid_training_then_resume_is_bitwise_exact(cli, tmp_path, reference):
    recipe = write_recipe(tmp_path, RECIPE)
    out = tmp_path / "killed"
    child = run_until_checkpoint(tmp_path, recipe, out, "train", signal.SIGKILL)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert not (out / "model.safetensors").exists()  # really killed before the end
    assert json.loads((out / "status.json").read_text())["state"] == "running"
    last = max(int(p.name.split("step")[1]) for p in (out / "checkpoints").glob("train-step*"))
    assert last < RECIPE["train"]["steps"]

    code, stdout, err = cli("run", "--resume", out)
    assert code == 0, err
    assert f"run complete: {out}" in stdout
    assert_same_weights(out, reference)
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "complete" and status["resumes"] == 1 and status["resumed_from_state"] == "running"
    log = (out / "log.txt").read_text()
    assert f"train: resumed at step {last} of 30" in log
    assert log.count("model tiny_vit") == 2  # appended, not replaced
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["step"] for r in metrics["train"]["history"]] == [5, 10, 15, 20, 25, 30]  # history carried over

    code, stdout, _err = cli("run", "--resume", out)  # a finished run: nothing to do
    assert code == 0 and "already complete" in stdout


# --- in-process crashes: the same on-disk state as a kill right after a checkpoint, but fast ---------------

class CrashAt:
    """A test plugin: raise at ``step`` (1-based) of ``phase``; ``phase=None`` disables it."""

    def __init__(self) -> None:
        self.phase: str | None = None
        self.step = 0
        self.stage = ""

    @hookimpl
    def on_stage_start(self, run, stage):
        self.stage = stage

    @hookimpl
    def after_optimizer_step(self, run, step, model):
        if self.stage == self.phase and step + 1 == self.step:
            raise RuntimeError(f"simulated crash at {self.phase} step {self.step}")


class DropoutModels:
    """A test plugin: tiny_vit whose outputs pass through dropout, so training draws from the global generator."""

    @hookimpl
    def register_models(self, register):
        from corecompress_builtin.models import TinyViTAdapter, TinyViTOptions

        class DropoutViT(TinyViTAdapter):
            def build(self):
                model = super().build()
                model.head = torch.nn.Sequential(torch.nn.Dropout(0.3), model.head)
                return model

        register("tiny_vit_dropout", DropoutViT, TinyViTOptions)


@pytest.fixture(scope="module")
def plugins():
    from corecompress.plugin.loading import load_plugins

    crash = CrashAt()
    loaded = load_plugins(extra=[("crash_at", crash), ("dropout_models", DropoutModels())])
    return loaded, crash


def run_in_process(plugins, data: dict, out: Path, crash: tuple[str, int] | None = None):
    from corecompress.config.recipe import validate_recipe
    from corecompress.engine.runner import run_recipe

    loaded, crasher = plugins
    crasher.phase, crasher.step = crash if crash else (None, 0)
    try:
        return run_recipe(validate_recipe(copy.deepcopy(data), loaded.registry), loaded, out)
    finally:
        crasher.phase = None


def crash_and_resume(plugins, data: dict, tmp_path: Path, phase: str, step: int, damage=None) -> Path:
    from corecompress.engine.runner import resume_run

    out = tmp_path / f"crashed-{phase}-{step}"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_in_process(plugins, data, out, (phase, step))
    assert json.loads((out / "status.json").read_text())["state"] == "failed"
    assert not (out / "model.safetensors").exists()
    if damage is not None:
        damage(out)
    resume_run(out, plugins[0])
    return out


@pytest.mark.parametrize("phase", ["train", "retrain"])
def test_crash_then_resume_physical_with_dropout(plugins, tmp_path, phase):
    data = copy.deepcopy(RECIPE)
    data["model"]["name"] = "tiny_vit_dropout"
    data["train"]["steps"], data["retrain"]["steps"] = 20, 15
    ref = tmp_path / "reference"
    run_in_process(plugins, data, ref)
    out = crash_and_resume(plugins, data, tmp_path, phase, 12)
    assert_same_weights(out, ref)
    log = (out / "log.txt").read_text()
    assert f"{phase}: resumed at step 10 of" in log
    if phase == "retrain":
        assert "train: complete in checkpoint train-step0000020; not trained again" in log
        assert weights(out)["blocks.0.mlp.fc1.weight"].shape[0] < 64  # the physically pruned model


def test_resume_restores_generators_not_just_weights(plugins, tmp_path, monkeypatch):
    """Guard for the test above: without the generator state, dropout draws differ and so do the weights."""
    import corecompress.engine.training as training

    data = copy.deepcopy(RECIPE)
    data["model"]["name"] = "tiny_vit_dropout"
    data["train"]["steps"], data["retrain"] = 20, None
    data["prune"] = None
    ref = tmp_path / "reference"
    run_in_process(plugins, data, ref)
    monkeypatch.setattr(training, "set_rng_state", lambda state: None)
    out = crash_and_resume(plugins, data, tmp_path, "train", 12)
    wa, wb = weights(out), weights(ref)
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


ADADISTILL = {
    "version": 1, "name": "ada", "seed": 1, "threads": 1, "deterministic": True,
    "model": {"name": "tiny_vit", "num_outputs": 16},
    "data": {"name": "synthetic_prototypes", "num_classes": 6, "train_per_class": 8},
    "train": {"steps": 12, "batch_size": 16, "lr": 3e-3, "checkpoint_every": 4, "log_every": 4,
              "objective": {"name": "arcface", "s": 16}},
    "teacher": {},  # the model before pruning
    "evaluate": [],
    "prune": {"importance": "l1", "targets": ["channels", "neurons"], "sparsity": 0.5, "apply": "mask"},
    "retrain": {"steps": 12, "batch_size": 16, "lr": 1e-3, "checkpoint_every": 4, "log_every": 4,
                "objective": {"name": "adadistill", "s": 16}},
}


@pytest.mark.parametrize("phase", ["train", "retrain"])
def test_masked_adadistill_resume_restores_heads_centres_and_masks(plugins, tmp_path, phase):
    ref = tmp_path / "reference"
    run_in_process(plugins, ADADISTILL, ref)
    out = crash_and_resume(plugins, ADADISTILL, tmp_path, phase, 6)
    assert_same_weights(out, ref)
    assert torch.equal(load_file(str(out / "header.safetensors"))["weight"],
                       load_file(str(ref / "header.safetensors"))["weight"])
    ckpt = out / "checkpoints" / "retrain-step0000012"
    centres = load_file(str(ckpt / "objective.safetensors"))["centres"]
    assert centres.shape == (6, 16)
    reference_ckpt = ref / "checkpoints" / "retrain-step0000012"
    assert torch.equal(centres, load_file(str(reference_ckpt / "objective.safetensors"))["centres"])
    masks = load_file(str(ckpt / "masks.safetensors"))
    final = weights(out)
    for name, mask in masks.items():  # the pruned units are still exactly zero after the resumed retraining
        assert torch.all(final[name][mask == 0] == 0)
        assert (mask == 0).any()


def test_truncated_newest_checkpoint_falls_back_to_previous(plugins, tmp_path):
    data = copy.deepcopy(RECIPE)
    data["train"]["steps"], data["retrain"]["steps"] = 20, 10
    ref = tmp_path / "reference"
    run_in_process(plugins, data, ref)

    def truncate(out: Path) -> None:
        newest = out / "checkpoints" / "train-step0000010"
        blob = (newest / "model.safetensors").read_bytes()
        (newest / "model.safetensors").write_bytes(blob[: len(blob) // 2])

    with pytest.warns(CheckpointWarning) as caught:
        out = crash_and_resume(plugins, data, tmp_path, "train", 12, truncate)
    messages = [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "train-step0000010: model.safetensors is truncated" in messages[0]
    assert "trying the previous checkpoint" in messages[0]
    log = (out / "log.txt").read_text()
    assert "train: resumed at step 5 of 20 from checkpoint train-step0000005" in log
    assert_same_weights(out, ref)


def test_every_checkpoint_damaged_restarts_the_phase_exactly(plugins, tmp_path):
    data = copy.deepcopy(RECIPE)
    data["train"]["steps"], data["retrain"]["steps"] = 20, 10
    ref = tmp_path / "reference"
    run_in_process(plugins, data, ref)

    def corrupt_all(out: Path) -> None:
        for ckpt in (out / "checkpoints").glob("train-step*"):
            blob = bytearray((ckpt / "optimizer.safetensors").read_bytes())
            blob[-1] ^= 0xFF  # same size, one flipped byte: only the checksum can tell
            (ckpt / "optimizer.safetensors").write_bytes(bytes(blob))

    with pytest.warns(CheckpointWarning, match="optimizer.safetensors is corrupt \\(checksum mismatch\\)"):
        out = crash_and_resume(plugins, data, tmp_path, "train", 12, corrupt_all)
    assert "train: resumed at step" not in (out / "log.txt").read_text()
    assert_same_weights(out, ref)  # the phase reseeds from (seed, phase): a restart is exact too


def test_resume_errors_are_one_line(cli, tmp_path):
    code, _out, err = cli("run", "--resume", tmp_path / "nope")
    assert code == 2 and err.strip().count("\n") == 0 and "not a run directory" in err
    code, _out, err = cli("run", "--resume", tmp_path, "--out", tmp_path / "x")
    assert code == 2 and "takes no recipe, --out or --force" in err
    code, _out, err = cli("run")
    assert code == 2 and "name a recipe file, or --resume RUN_DIR" in err


def test_resume_refuses_a_run_directory_in_use(cli, tmp_path, reference):
    from corecompress.engine.rundir import RunLock

    with RunLock(reference):  # as a still-running process holds it
        code, _out, err = cli("run", "--resume", reference)
        assert code == 2 and f"{reference}: in use by another corecompress process" in err
        code, _out, err = cli("run", write_recipe(tmp_path, RECIPE), "--out", reference, "--force")
        assert code == 2 and "in use by another corecompress process" in err
    assert (reference / "model.safetensors").is_file()  # --force did not delete a directory in use


def test_crash_then_resume_gradual_pruning(plugins, tmp_path):
    """Gradual pruning: rounds after the resumed step still happen, the checkpointed masks carry the earlier ones."""
    data = copy.deepcopy(RECIPE)
    data["train"]["steps"] = 10
    data["prune"].update({"rounds": 3, "importance": "l1"})  # rounds after retraining steps 0, 5 and 10
    data["retrain"]["steps"] = 20
    ref = tmp_path / "reference"
    run_in_process(plugins, data, ref)
    out = crash_and_resume(plugins, data, tmp_path, "retrain", 8)
    assert_same_weights(out, ref)
    assert "retrain: resumed at step 5 of 20" in (out / "log.txt").read_text()
    assert json.loads((out / "plan.json").read_text()) == json.loads((ref / "plan.json").read_text())
    rounds = json.loads((out / "metrics.json").read_text())["prune_rounds"]
    assert [(r["round"], r["after_step"]) for r in rounds] == [(2, 5), (3, 10)]  # round 2 from before the crash
    assert rounds[0]["scoring_seconds"] is None and rounds[1]["scoring_seconds"] > 0
