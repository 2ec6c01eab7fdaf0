"""compile, channels_last and the deferred loss read (issue 12.3).

``compile: true`` compiles the student's (and teacher's) forward for a phase without changing a
state_dict key, and falls back to eager with one warning line when compiling fails at wrap time or at
the first call; ``channels_last: true`` trains a CNN in channels-last format (weights and batches);
the loop's deferred loss read (what a CUDA run does) gives the same run as the eager read, and a NaN
loss still stops it naming the first bad step, with no bad update in any checkpoint.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import corecompress.engine.training as training
from corecompress import hookimpl
from corecompress.engine.deferred import DeferredLoss
from corecompress.engine.training import NonFiniteLossError
from tests_shared import AtCallsOptions, NanAt

RECIPE = {
    "version": 1, "name": "execution", "seed": 2, "threads": 1, "deterministic": True,
    "model": {"name": "tiny_cnn", "num_outputs": 10},
    "data": {"name": "synthetic_prototypes", "num_classes": 10, "train_per_class": 8},
    "train": {"steps": 12, "batch_size": 16, "lr": 3e-3, "checkpoint_every": 5, "log_every": 4},
    "evaluate": [], "export": {"formats": ["safetensors"]},
}
DISTILL = {**RECIPE, "teacher": {},  # the teacher is the trained model; the retrained student distils from it
           "retrain": {"steps": 4, "batch_size": 16, "objective": "feature_mse", "log_every": 2}}


class Recorder:
    """Records, at each optimizer step, whether the student's 4-D weights and its input batch are channels-last."""

    def __init__(self) -> None:
        self.weights: list[bool] = []
        self.inputs: list[bool] = []
        self._hooked: set[int] = set()

    @hookimpl
    def register_losses(self, register):
        register("nan_at", NanAt, AtCallsOptions)

    @hookimpl
    def after_optimizer_step(self, run, step, model):
        conv = next(p for p in model.parameters() if p.ndim == 4)
        self.weights.append(conv.is_contiguous(memory_format=torch.channels_last))
        if id(model) not in self._hooked:
            self._hooked.add(id(model))
            model.register_forward_pre_hook(lambda module, args: self.inputs.append(
                args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous()))


@pytest.fixture
def plugins():
    from corecompress.plugin.loading import load_plugins

    recorder = Recorder()
    return load_plugins(extra=[("recorder", recorder)]), recorder


def run(plugins, data: dict, out: Path):
    from corecompress.config.recipe import validate_recipe
    from corecompress.engine.runner import run_recipe

    return run_recipe(validate_recipe(copy.deepcopy(data), plugins[0].registry), plugins[0], out)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def compile_warnings(out: Path) -> list[str]:
    return [line for line in (out / "log.txt").read_text().splitlines() if "compile:" in line]


# --- compile ----------------------------------------------------------------------------------

def test_compile_keeps_plain_keys_and_compiles_student_and_teacher(plugins, tmp_path, monkeypatch):
    real = torch.compile
    compiled: list[str] = []

    def eager_backend(fn, **kwargs):  # real dynamo tracing, without a C++ build on this CPU
        compiled.append(type(fn.__self__).__name__)
        return real(fn, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_backend)
    out = tmp_path / "compiled"
    ctx = run(plugins, {**DISTILL, "compile": True, "train": {**RECIPE["train"], "steps": 4, "checkpoint_every": 2}},
              out)
    assert len(compiled) == 3  # train: the student; retrain: the student and the teacher
    assert compile_warnings(out) == []
    assert "forward" not in vars(ctx.model) and "forward" not in vars(ctx.teacher)  # eager again after training
    for ckpt in ("train-step0000002", "retrain-step0000004"):
        keys = weights(out / "checkpoints" / ckpt / "model.safetensors").keys()
        assert keys and not any("_orig_mod" in k for k in keys)
    assert weights(out / "model.safetensors").keys() == ctx.model.state_dict().keys()


@pytest.mark.parametrize("failure", ["wrap", "first call"])
def test_compile_failure_is_one_warning_line_then_eager(plugins, tmp_path, monkeypatch, failure):
    reference = tmp_path / "eager"
    run(plugins, RECIPE, reference)

    def broken_compile(fn, **kwargs):
        if failure == "wrap":
            raise RuntimeError("no C++ compiler found")

        def call(*args, **kw):
            raise RuntimeError("inductor: BackendCompilerFailed")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    out = tmp_path / "fallback"
    run(plugins, {**RECIPE, "compile": True}, out)
    lines = compile_warnings(out)
    assert len(lines) == 1 and "torch.compile of the student failed" in lines[0] and "eager mode" in lines[0]
    assert same(weights(out / "model.safetensors"), weights(reference / "model.safetensors"))


@pytest.mark.slow
def test_real_compile_on_a_tiny_model_works_or_falls_back(plugins, tmp_path):
    """torch.compile with its default backend (inductor: a C++ build on a CPU): it works, or the log
    says in one line that it did not and the run finished eagerly."""
    reference, out = tmp_path / "eager", tmp_path / "compiled"
    data = {**RECIPE, "train": {**RECIPE["train"], "steps": 3, "checkpoint_every": 0}}
    eager = run(plugins, data, reference)
    compiled = run(plugins, {**data, "compile": True}, out)
    assert len(compile_warnings(out)) <= 1
    assert weights(out / "model.safetensors").keys() == weights(reference / "model.safetensors").keys()
    losses = [[r["loss"] for r in ctx.metrics["train"]["history"]] for ctx in (compiled, eager)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)  # the same training up to the kernels' rounding


# --- channels_last -----------------------------------------------------------------------------

def test_channels_last_trains_a_cnn_in_that_format(plugins, tmp_path):
    loaded, recorder = plugins
    reference = tmp_path / "contiguous"
    reference_ctx = run(plugins, RECIPE, reference)
    assert not any(recorder.weights) and not any(recorder.inputs)
    recorder.weights.clear(), recorder.inputs.clear()
    out = tmp_path / "channels_last"
    ctx = run(plugins, {**RECIPE, "channels_last": True}, out)
    assert recorder.weights and all(recorder.weights)
    assert recorder.inputs and all(recorder.inputs)  # every batch after the first step's hook
    assert all(p.is_contiguous() for p in ctx.model.parameters())  # plain format again after training
    assert weights(out / "model.safetensors").keys() == weights(reference / "model.safetensors").keys()
    # the same training up to the kernels' rounding (AdamW amplifies last-bit differences in the weights)
    losses = [[r["loss"] for r in ctx.metrics["train"]["history"]] for ctx in (ctx, reference_ctx)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)


# --- the deferred loss read --------------------------------------------------------------------

def test_deferred_loss_holds_one_step():
    deferred = DeferredLoss(torch.device("cpu"))
    assert deferred.take() is None
    deferred.put(3, torch.tensor(0.25))
    with pytest.raises(RuntimeError, match="not taken"):
        deferred.put(4, torch.tensor(0.5))
    pending = deferred.take()
    assert (pending.step, pending.value) == (3, 0.25) and deferred.take() is None


def test_deferred_read_gives_the_same_run(plugins, tmp_path, monkeypatch):
    reference = tmp_path / "eager"
    run(plugins, RECIPE, reference)
    monkeypatch.setattr(training, "_defers_reads", lambda loop: True)  # what a single CUDA process does
    out = tmp_path / "deferred"
    run(plugins, RECIPE, out)
    assert same(weights(out / "model.safetensors"), weights(reference / "model.safetensors"))
    for name in ("metrics.json", "checkpoints/train-step0000010/info.json"):
        a, b = (out / name).read_text(), (reference / name).read_text()
        strip = lambda text: [line for line in text.splitlines() if "seconds" not in line]  # noqa: E731
        assert strip(a) == strip(b)


@pytest.mark.parametrize("bad", [8, 10, 12])
def test_deferred_read_stops_at_the_first_bad_step_before_any_checkpoint_holds_it(plugins, tmp_path, monkeypatch,
                                                                                  bad):
    monkeypatch.setattr(training, "_defers_reads", lambda loop: True)
    data = {**RECIPE, "train": {**RECIPE["train"], "objective": {"name": "nan_at", "steps": [bad, bad + 1]}}}
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=f"train: loss is nan at step {bad} of 12; stopped"):
        run(plugins, data, out)
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["train-step0000005"] + (["train-step0000010"] if bad > 10 else [])
    for name in kept:
        saved = weights(out / "checkpoints" / name / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in saved.values())
    assert not (out / "model.safetensors").exists()
