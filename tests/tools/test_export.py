"""Export and reload: ``corecompress.load`` rebuilds pruned models (physical and masked) of every quick
model adapter from architecture + plan + safetensors; ONNX exports of physically pruned SwinFace and
IResNet match PyTorch under onnxruntime; ``corecompress export`` writes either format."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import corecompress
from corecompress.errors import UserError
from corecompress.tools.export import export_run
from corecompress.pruning.physical import GatheredLinear
from corecompress.pruning.plan import make_plan

ADAPTERS = [
    ({"name": "tiny_vit"}, ["channels", "heads", "neurons"]),
    ({"name": "tiny_cnn"}, ["filters"]),
    ({"name": "swinface", "preset": "micro"}, ["channels", "heads", "neurons"]),
    ({"name": "iresnet", "depth": 0}, ["filters"]),
]


@pytest.fixture(scope="module")
def plugins():
    from corecompress.plugin.loading import load_plugins

    return load_plugins()


def pruned(plugins, model: dict, targets: list[str], apply: str, seed: int = 0):
    """(ctx-like object, pruned model) as the runner leaves them before its export stage."""
    from corecompress.config.recipe import validate_recipe

    recipe = validate_recipe({"version": 1, "model": model, "data": "synthetic_prototypes",
                              "prune": {"targets": targets, "apply": apply, "sparsity": 0.5}}, plugins.registry)
    comp = plugins.registry.get("model", recipe.model.name)
    spec = comp.create(recipe.model.options)
    torch.manual_seed(seed)
    net = spec.build().eval()
    with torch.no_grad():  # non-trivial norm statistics and scales, so a wrong reload would show
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):  # noqa: SLF001
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    groups = spec.prunable_groups(net, tuple(targets))
    gen = torch.Generator().manual_seed(seed)
    plan = make_plan({g.name: torch.rand(g.size, generator=gen) for g in groups}, groups, 0.5, "local", 0.1)
    ctx = SimpleNamespace(hook=plugins.hook, masks=None)
    chosen = recipe.prune.apply
    net = plugins.registry.get("applier", chosen.name).create(chosen.options).apply(net, groups, plan, ctx)
    return SimpleNamespace(recipe=recipe, model=net.eval(), plan=plan, model_spec=spec), spec


@pytest.mark.parametrize("apply", ["physical", "mask"])
@pytest.mark.parametrize("model,targets", ADAPTERS, ids=[a[0]["name"] for a in ADAPTERS])
def test_load_rebuilds_pruned_model_without_recipe(plugins, tmp_path, model, targets, apply):
    ctx, spec = pruned(plugins, model, targets, apply)
    ctx.out_dir = tmp_path
    export_run(ctx, ["safetensors"])
    dense_params = sum(p.numel() for p in spec.build().parameters())
    for source in (tmp_path, tmp_path / "architecture.json", tmp_path / "model.safetensors"):  # dir, json, one file
        loaded = corecompress.load(source)
        own, back = ctx.model.state_dict(), loaded.state_dict()
        assert own.keys() == back.keys()
        assert all(torch.equal(own[k], back[k]) for k in own)
        x = torch.randn(2, *spec.input_size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            assert torch.equal(loaded(x), ctx.model(x))
    params = sum(p.numel() for p in loaded.parameters())
    if apply == "physical":
        assert params < dense_params
    else:  # masked: dense size, the removed units are zeros in the weights
        assert params == dense_params
        nonzero = sum(int((p != 0).sum()) for p in loaded.parameters())
        assert nonzero < params


def test_load_refuses_what_is_not_an_export(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="not a corecompress export"):
        corecompress.load(tmp_path / "notes.txt")
    with pytest.raises(UserError, match="no exported model"):
        corecompress.load(tmp_path)
    (tmp_path / "architecture.json").write_text(json.dumps({"format": "something else"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="not a corecompress model description"):
        corecompress.load(tmp_path)


@pytest.mark.parametrize("model,targets", [ADAPTERS[2], ADAPTERS[3]], ids=["swinface_micro", "iresnet_small"])
def test_onnx_of_physically_pruned_face_models_matches_pytorch(plugins, tmp_path, model, targets):
    pytest.importorskip("onnx", reason="the optional 'onnx' extra (onnx) is not installed")
    pytest.importorskip("onnxruntime", reason="the optional 'onnx' extra (onnxruntime) is not installed")
    from corecompress.tools.onnx_export import export_onnx, onnx_relative_error

    ctx, spec = pruned(plugins, model, targets, "physical")
    if model["name"] == "swinface":
        assert any(isinstance(m, GatheredLinear) for m in ctx.model.modules())  # index_select must export
    path = export_onnx(ctx.model, spec.input_size, tmp_path / "model.onnx")
    error = onnx_relative_error(ctx.model, path, spec.input_size, batch=3)  # another batch size than exported
    assert error is not None and error <= 1e-4


RUN = {
    "version": 1, "name": "export", "seed": 0, "threads": 1,
    "model": {"name": "tiny_vit", "num_outputs": 10},
    "data": {"name": "synthetic_prototypes", "num_classes": 10, "train_per_class": 4},
    "train": {"steps": 3, "batch_size": 8},
    "evaluate": [],
    "prune": {"importance": "l1", "targets": ["channels", "heads", "neurons"], "sparsity": 0.5, "apply": "physical"},
    "retrain": {"steps": 2, "batch_size": 8},
}


def test_export_command_writes_safetensors_and_onnx(cli, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RUN))
    run = tmp_path / "run"
    code, _out, err = cli("run", recipe, "--out", run)
    assert code == 0, err
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = corecompress.load(run)(x)

    code, stdout, err = cli("export", run, "--format", "safetensors", "--out", tmp_path / "single.safetensors")
    assert code == 0, err
    assert f"exported: {tmp_path / 'single.safetensors'}" in stdout
    with torch.no_grad():
        assert torch.equal(corecompress.load(tmp_path / "single.safetensors")(x), expected)

    if _has_onnx():
        code, stdout, err = cli("export", run, "--format", "onnx", "--out", tmp_path / "m.onnx")
        assert code == 0, err
        assert (tmp_path / "m.onnx").stat().st_size > 0
        error = float(stdout.split("max relative error ")[1].split()[0])
        assert error <= 1e-4

    code, _out, err = cli("export", tmp_path / "missing", "--format", "onnx")
    assert code == 2 and err.strip().count("\n") == 0 and "no such file or directory" in err
    (tmp_path / "unfinished").mkdir()
    code, _out, err = cli("export", tmp_path / "unfinished")
    assert code == 2 and "corecompress run --resume" in err


def _has_onnx() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def test_onnx_missing_extra_is_one_clear_line(monkeypatch, tmp_path):
    import builtins

    from corecompress.tools.onnx_export import export_onnx

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError("No module named 'onnx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(UserError, match=r"pip install 'corecompress\[onnx\]'"):
        export_onnx(torch.nn.Linear(2, 2), (2,), tmp_path / "x.onnx")
    assert not Path(tmp_path / "x.onnx").exists()
