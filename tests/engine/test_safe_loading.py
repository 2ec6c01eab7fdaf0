"""Safe loading: a malicious pickle (its ``__reduce__`` would create a marker file) given as recipe
weights, to ``corecompress.load``, through a resumed run or planted in a checkpoint is refused
without running — the marker never appears — with one line (exit 2 from the CLI). Plus a source
audit: no unsafe deserialisation call anywhere in the core or the built-in plugins."""
from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import corecompress
from corecompress.engine.checkpoint import CheckpointWarning
from corecompress.errors import UserError

REPO = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the file appears iff the pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_pt(folder: Path, name: str = "evil.pt") -> tuple[Path, Path]:
    """(malicious torch.save file, the marker it would create)."""
    marker = folder / f"{name}.executed"
    path = folder / name
    torch.save({"patch_embed.weight": Payload(marker)}, path)
    return path, marker


def test_the_payload_is_live(tmp_path):
    """Control: an unsafe load really runs the payload, so the refusals below are meaningful."""
    path, marker = evil_pt(tmp_path)
    torch.load(path, weights_only=False)
    assert marker.exists()


RECIPE = {
    "version": 1, "name": "safe", "seed": 0, "threads": 1,
    "model": {"name": "tiny_vit", "num_outputs": 10},
    "data": {"name": "synthetic_prototypes", "num_classes": 10, "train_per_class": 4},
    "train": {"steps": 10, "batch_size": 8, "checkpoint_every": 5},
    "evaluate": [],
}


def test_recipe_weights_pickle_is_refused(cli, tmp_path):
    path, marker = evil_pt(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "weights": str(path)}))
    code, _out, err = cli("run", recipe, "--out", tmp_path / "run", "--quiet")
    assert code == 2
    assert err.strip().count("\n") == 0
    assert err.startswith(f"error: {path}: refused: a pickle that would run code")
    assert not marker.exists()


def test_corecompress_load_refuses_pickles(tmp_path):
    from corecompress.tools.export import export_run, load_exported
    from corecompress.plugin.loading import load_plugins
    from corecompress.config.recipe import validate_recipe

    recipe = validate_recipe({"version": 1, "model": "tiny_vit", "data": "synthetic_prototypes"},
                             load_plugins().registry)
    from corecompress_builtin.tiny_models import TinyViT

    spec = SimpleNamespace(input_size=(3, 16, 16))
    export_run(SimpleNamespace(recipe=recipe, model=TinyViT(), plan=None, model_spec=spec, out_dir=tmp_path),
               ["safetensors"])
    corecompress.load(tmp_path)  # the export itself loads
    path, marker = evil_pt(tmp_path)
    with pytest.raises(UserError, match="refused: a pickle that would run code"):
        load_exported(tmp_path, weights=path)
    with pytest.raises(UserError, match="not a corecompress export"):
        corecompress.load(path)
    renamed = tmp_path / "evil.safetensors"  # a pickle dressed as safetensors is not parsed as a pickle either
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(UserError, match="not a readable safetensors file"):
        corecompress.load(renamed)
    with pytest.raises(UserError, match="cannot read weights"):
        load_exported(tmp_path, weights=renamed)
    assert not marker.exists()


@pytest.fixture
def finished_run(cli, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    out = tmp_path / "run"
    code, _out, err = cli("run", recipe, "--out", out)
    assert code == 0, err
    (out / "model.safetensors").unlink()
    (out / "status.json").write_text(json.dumps({"state": "interrupted"}))  # as if stopped before the end
    return out


def test_resume_refuses_pickled_weights_in_resolved_recipe(cli, tmp_path, finished_run):
    path, marker = evil_pt(tmp_path)
    resolved = json.loads((finished_run / "recipe.resolved.json").read_text())
    resolved["weights"] = str(path)
    (finished_run / "recipe.resolved.json").write_text(json.dumps(resolved))
    code, _out, err = cli("run", "--resume", finished_run, "--quiet")
    assert code == 2 and err.strip().count("\n") == 0 and "refused" in err
    assert not marker.exists()


def test_pickle_planted_in_checkpoint_is_never_unpickled(cli, tmp_path, finished_run):
    path, marker = evil_pt(tmp_path)
    newest = finished_run / "checkpoints" / "train-step0000010"
    for part in ("model.safetensors", "optimizer.safetensors"):
        (newest / part).write_bytes(path.read_bytes())
    manifest = json.loads((newest / "manifest.json").read_text())  # a forger who also fixes the manifest
    for part in ("model.safetensors", "optimizer.safetensors"):
        blob = (newest / part).read_bytes()
        manifest["files"][part] = {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    (newest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(CheckpointWarning, match="safetensors is unreadable"):
        code, _out, err = cli("run", "--resume", finished_run, "--quiet")
    assert code == 0, err
    assert "train: resumed at step 5 of 10" in (finished_run / "log.txt").read_text()
    assert not marker.exists()
    assert not any(p.suffix in {".pt", ".pth", ".pkl"} for p in (finished_run / "checkpoints").rglob("*"))


# --- source audit ------------------------------------------------------------------------------

SAFE_PICKLE_MODULE = "safe_pickle.py"  # the face plugin's restricted unpickler (allow-list of globals)


def _unsafe_calls(path: Path, root: Path = REPO) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        name = node.func.attr
        keywords = {k.arg: k.value for k in node.keywords}
        where = f"{path.relative_to(root)}:{node.lineno}"
        if owner == "torch" and name == "load":
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(f"{where} torch.load without weights_only=True")
        elif owner in {"pickle", "cPickle", "dill", "joblib"} and name in {"load", "loads", "Unpickler"}:
            if path.name != SAFE_PICKLE_MODULE:
                found.append(f"{where} {owner}.{name}")
        elif owner == "yaml" and name in {"load", "unsafe_load", "full_load", "load_all"}:
            found.append(f"{where} yaml.{name}")
        elif owner in {"np", "numpy"} and name == "load":
            flag = keywords.get("allow_pickle")
            if isinstance(flag, ast.Constant) and flag.value is True:
                found.append(f"{where} numpy.load(allow_pickle=True)")
    return found


def test_no_unsafe_deserialisation_in_sources():
    files = [p for root in ("corecompress", "plugins") for p in (REPO / root).rglob("*.py")]
    assert len(files) > 20
    problems = [problem for f in files for problem in _unsafe_calls(f)]
    assert problems == []


def test_audit_catches_unsafe_calls(tmp_path):
    """The audit itself: it flags each unsafe form and accepts the safe ones."""
    sample = tmp_path / "sample.py"
    sample.write_text("import torch, pickle, yaml, numpy as np\n"
                      "torch.load(p)\ntorch.load(p, weights_only=False)\ntorch.load(p, weights_only=True)\n"
                      "pickle.loads(b)\nyaml.load(s)\nyaml.safe_load(s)\nnp.load(p, allow_pickle=True)\nnp.load(p)\n")
    problems = _unsafe_calls(sample, tmp_path)
    assert [p.split(" ", 1)[1] for p in problems] == [
        "torch.load without weights_only=True", "torch.load without weights_only=True", "pickle.loads",
        "yaml.load", "numpy.load(allow_pickle=True)"]


def test_a_failing_safetensors_write_is_the_os_error_it_is(tmp_path, monkeypatch):
    """safetensors reports ENOSPC as SafetensorError; write_tensors makes it the OSError every caller handles."""
    import errno

    import safetensors.torch
    from safetensors import SafetensorError

    from corecompress.weights import write_tensors

    def full(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError) as caught:
        write_tensors({"w": torch.zeros(1)}, tmp_path / "x.safetensors")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "x.safetensors")

    def other(tensors, filename, metadata=None):
        raise SafetensorError("tensor is not contiguous")

    monkeypatch.setattr(safetensors.torch, "save_file", other)
    with pytest.raises(SafetensorError, match="not contiguous"):  # not an OS error: unchanged
        write_tensors({"w": torch.zeros(1)}, tmp_path / "x.safetensors")
