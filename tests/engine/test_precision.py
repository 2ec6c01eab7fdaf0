"""Precision (issue 12.2): ``precision: auto`` is fp32 on a CPU and recorded; bf16 and fp16 (with its
gradient scaler, checkpointed) train a tiny model to finite losses and resume bitwise like an
uninterrupted run; a scaler-skipped step is not a non-finite loss; every loss computes its logits in
float32 under autocast; a malformed setting is one line, exit 2."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from corecompress import hookimpl
from corecompress.engine.precision import autocast, float32_math, resolve_precision
from tests_shared import AtCallsOptions, LossAtCalls

RECIPE = {
    "version": 1, "name": "precision", "seed": 4, "threads": 1, "deterministic": True,
    "model": {"name": "tiny_cnn", "num_outputs": 10},
    "data": {"name": "synthetic_prototypes", "num_classes": 10, "train_per_class": 8},
    "train": {"steps": 12, "batch_size": 16, "lr": 3e-3, "checkpoint_every": 5, "log_every": 4},
    "evaluate": [], "export": {"formats": ["safetensors"]},
}


class CrashAt:
    """Raise after optimizer step ``step`` (1-based); 0 disables it."""

    def __init__(self) -> None:
        self.step = 0

    @hookimpl
    def after_optimizer_step(self, run, step, model):
        if step + 1 == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


class BadGradients(LossAtCalls):
    """Cross-entropy plus sqrt(0 · x) at the listed calls: 0 forward, NaN backward — what an fp16
    gradient overflow looks like to the scaler."""

    @staticmethod
    def perturb(loss, outputs):
        return loss + torch.sqrt(outputs.float().sum() * 0.0)


class TestLosses:
    @hookimpl
    def register_losses(self, register):
        register("bad_gradients", BadGradients, AtCallsOptions)


@pytest.fixture(scope="module")
def plugins():
    from corecompress.plugin.loading import load_plugins

    crash = CrashAt()
    return load_plugins(extra=[("crash_at", crash), ("test_losses", TestLosses())]), crash


def run(plugins, data: dict, out: Path, crash_at: int = 0, **overrides):
    from corecompress.config.recipe import validate_recipe
    from corecompress.engine.runner import run_recipe

    loaded, crash = plugins
    crash.step = crash_at
    try:
        return run_recipe(validate_recipe(copy.deepcopy(data), loaded.registry), loaded, out, **overrides)
    finally:
        crash.step = 0


def test_auto_is_fp32_on_cpu_and_recorded(plugins, tmp_path):
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    ctx = run(plugins, RECIPE, tmp_path / "run")
    assert ctx.precision == "fp32"
    assert json.loads((tmp_path / "run" / "status.json").read_text())["precision"] == "fp32"
    assert json.loads((tmp_path / "run" / "versions.json").read_text())["precision"] == "fp32"
    assert json.loads((tmp_path / "run" / "recipe.resolved.json").read_text())["precision"] == "auto"
    assert "- computed on `cpu` in fp32" in (tmp_path / "run" / "report.md").read_text()
    assert not (tmp_path / "run" / "checkpoints" / "train-step0000012" / "scaler.json").exists()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_trains_finite_and_resumes_bitwise(plugins, tmp_path, precision):
    from corecompress.engine.runner import resume_run

    data = {**RECIPE, "precision": precision}
    reference = tmp_path / "reference"
    ctx = run(plugins, data, reference)
    assert ctx.precision == precision
    history = json.loads((reference / "metrics.json").read_text())["train"]["history"]
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
    fp32 = tmp_path / "fp32"
    run(plugins, RECIPE, fp32)
    assert history != json.loads((fp32 / "metrics.json").read_text())["train"]["history"]  # really autocast

    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(plugins, data, out, crash_at=7)
    resume_run(out, plugins[0])
    a, b = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    final = "checkpoints/train-step0000012/scaler.json"
    if precision == "fp16":  # the scaler's growth tracker counted on from step 5, not from 0
        assert json.loads((out / final).read_text()) == json.loads((reference / final).read_text())
        assert json.loads((out / final).read_text())["_growth_tracker"] == 12
    else:
        assert not (out / final).exists()


def test_scaler_skipped_step_is_not_a_nonfinite_stop(plugins, tmp_path):
    data = {**RECIPE, "precision": "fp16",
            "train": {**RECIPE["train"], "nonfinite": "stop", "objective": {"name": "bad_gradients", "steps": [3]}}}
    out = tmp_path / "run"
    run(plugins, data, out)
    ckpt = out / "checkpoints" / "train-step0000012"
    assert json.loads((ckpt / "scaler.json").read_text())["scale"] == 2.0 ** 15  # backed off once
    assert int(load_file(str(ckpt / "optimizer.safetensors"))["t.state.0.step"]) == 11  # step 3 skipped
    assert json.loads((out / "metrics.json").read_text())["train"]["skipped_steps"] == 0
    assert all(torch.isfinite(t).all() for t in load_file(str(out / "model.safetensors")).values())


def test_float32_math_casts_inputs_and_switches_autocast_off():
    seen = {}

    @float32_math
    def loss(x, batch):
        seen["enabled"] = torch.is_autocast_enabled("cpu")
        seen["dtypes"] = (x.dtype, batch["t"][0].dtype, batch["label"].dtype)
        return torch.nn.functional.linear(x, x)

    with autocast("bf16", torch.device("cpu")):
        out = loss(torch.ones(2, 3, dtype=torch.bfloat16),
                   {"t": (torch.ones(1, dtype=torch.float16),), "label": torch.zeros(2, dtype=torch.long)})
    assert out.dtype == torch.float32 and seen == {"enabled": False,
                                                   "dtypes": (torch.float32, torch.float32, torch.long)}


@pytest.mark.parametrize("name", ["cross_entropy", "arcface", "cosface", "adadistill", "feature_mse", "hinton_kd", "arcdistill"])
def test_losses_compute_logits_in_float32_under_autocast(monkeypatch, tmp_path, name):
    """The logits reaching cross-entropy are float32 and computed with autocast off, though the model's
    outputs (and the teacher's) arrive in bf16 from an autocast forward."""
    from types import SimpleNamespace

    from corecompress.plugin.loading import load_plugins

    registry = load_plugins().registry
    if name not in registry.components["loss"]:
        pytest.skip(f"loss {name} not installed")
    seen = []
    real = F.cross_entropy

    def recording(logits, labels, *args, **kwargs):
        seen.append((logits.dtype, torch.is_autocast_enabled("cpu")))
        return real(logits, labels, *args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", recording)
    component = registry.get("loss", name)
    options = {}
    if name in ("hinton_kd", "arcdistill"):  # the teacher's classifier, from a file
        from corecompress.weights import write_tensors

        write_tensors({"weight": torch.randn(8, 8)}, tmp_path / "header.safetensors")
        options["header"] = str(tmp_path / "header.safetensors")
    loss = component.create(component.parse(options, "loss"))
    embedding = torch.nn.Linear(8, 8)
    ctx = SimpleNamespace(data=SimpleNamespace(num_classes=8), model=embedding, teacher=embedding,
                          model_spec=SimpleNamespace(embedding_size=8, input_size=(8,)), device=torch.device("cpu"),
                          recipe=SimpleNamespace(seed=0), artifacts=None, log=None, precision="bf16")
    try:
        loss.setup(ctx)
    except Exception as exc:  # noqa: BLE001 - a loss that needs more of a run than this stand-in
        pytest.skip(f"{name}: setup needs a fuller run context ({type(exc).__name__})")
    with autocast("bf16", torch.device("cpu")):
        outputs = embedding(torch.randn(4, 8))
        teacher = embedding(torch.randn(4, 8))
        assert outputs.dtype == torch.bfloat16
        parts = loss(outputs, {"label": torch.tensor([0, 1, 2, 3]), "index": torch.arange(4)}, teacher)
    assert parts["loss"].dtype == torch.float32
    assert seen and all(s == (torch.float32, False) for s in seen), seen


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("where", ["recipe", "run", "compare", "export"])
def test_malformed_precision_is_one_line_exit_2(cli, tmp_path, where):
    data = {**RECIPE, "precision": "fp8"} if where == "recipe" else RECIPE
    recipe = write(tmp_path, data)
    args = {"recipe": ("run", recipe, "--out", tmp_path / "out"),
            "run": ("run", recipe, "--out", tmp_path / "out", "--precision", "fp8"),
            "compare": ("compare", recipe, "--out", tmp_path / "out", "--precision", "fp8"),
            "export": ("export", tmp_path / "out", "--precision", "fp8")}[where]
    code, _out, err = cli(*args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "fp8" in lines[0], err
    assert "auto, fp32, bf16 or fp16" in lines[0]
    assert not (tmp_path / "out").exists()


def test_export_writes_half_precision_weights_that_reload(cli, plugins, tmp_path):
    from corecompress.tools.export import load_exported

    out = tmp_path / "run"
    run(plugins, {**RECIPE, "train": {**RECIPE["train"], "steps": 2, "checkpoint_every": 0}}, out)
    code, stdout, err = cli("export", out, "--precision", "bf16", "--out", tmp_path / "m16.safetensors")
    assert code == 0, err
    half, full = load_file(str(tmp_path / "m16.safetensors")), load_file(str(out / "model.safetensors"))
    assert {v.dtype for v in half.values() if v.is_floating_point()} == {torch.bfloat16}
    assert all(torch.equal(half[k], full[k].to(half[k].dtype)) for k in full)
    model = load_exported(tmp_path / "m16.safetensors")
    assert next(model.parameters()).dtype == torch.float32
    code, _out, err = cli("export", out, "--format", "onnx", "--precision", "fp16", "--out", tmp_path / "m.onnx")
    assert code == 2 and err.count("\n") == 1 and "ONNX is written in fp32" in err


def test_evaluation_forward_runs_in_the_run_precision():
    """The evaluator's model call runs under autocast (the model computes in bf16) and hands the
    evaluator float32 outputs; afterwards the model's forward is its own again."""
    from types import SimpleNamespace

    from corecompress.engine.evaluate import evaluate_model

    inside = []

    class Probe(torch.nn.Linear):
        def forward(self, x):
            out = super().forward(x)
            inside.append(out.dtype)
            return out

    model = Probe(4, 3)

    class Evaluator:
        def evaluate(self, model, data, ctx):
            return {"dtype": str(model(torch.randn(2, 4)).dtype)}

    ctx = SimpleNamespace(precision="bf16", device=torch.device("cpu"), data=None,
                          recipe=SimpleNamespace(evaluate=[SimpleNamespace(name="probe")]),
                          create=lambda kind, chosen: Evaluator())
    assert evaluate_model(ctx, model) == {"probe/dtype": "torch.float32"}
    assert inside == [torch.bfloat16] and "forward" not in vars(model)
    ctx.precision = "fp32"
    assert evaluate_model(ctx, model) == {"probe/dtype": "torch.float32"} and inside[-1] == torch.float32
