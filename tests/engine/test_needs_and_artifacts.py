"""Needs declared once at registration, checked at validation; artifacts handed over by the engine."""
from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

from corecompress.engine.artifacts import ArtifactStore
from corecompress.errors import PluginError, UserError
from corecompress.plugin.registry import Registry, make_register

BASE = {"version": 1, "name": "n", "threads": 1, "model": {"name": "swinface", "preset": "micro", "img_size": 32},
        "data": {"name": "synthetic_faces", "identities": 6, "images_per_identity": 4, "eval_images_per_identity": 2,
                 "eval_identities": 4, "image_size": 32}, "evaluate": []}


def _write(tmp_path, **sections):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**BASE, **sections}))
    return path


def test_a_loss_needing_a_teacher_without_one_is_a_recipe_error_and_creates_nothing(cli, tmp_path):
    recipe = _write(tmp_path, retrain={"steps": 1, "batch_size": 4, "objective": "adadistill"})
    out = tmp_path / "run"
    code, _o, err = cli("run", recipe, "--out", out)
    assert code == 2 and err.strip() == ("error: retrain.objective: 'adadistill' needs a teacher; add a 'teacher:' "
                                         "section (teacher: {} = the model as it is before pruning)")
    assert not out.exists()


def test_a_missing_artifact_names_what_would_produce_it(cli, tmp_path):
    recipe = _write(tmp_path, teacher={}, train={"steps": 1, "batch_size": 4},  # cross_entropy: no header
                    retrain={"steps": 1, "batch_size": 4, "objective": "arcdistill"})
    code, _o, err = cli("validate", recipe)
    assert code == 2 and "retrain.objective: 'arcdistill' needs the artifact 'header', which no earlier phase" in err
    assert "loss 'arcface'" in err and "loss 'margin'" in err
    recipe = _write(tmp_path, evaluate=[{"name": "attributes", "head": "trained"}])
    code, _o, err = cli("validate", recipe)
    assert code == 2 and "evaluate[0]: 'attributes' needs the artifact 'attribute_head'" in err
    assert "loss 'faces_attributes'" in err


def test_the_trained_head_reaches_arcdistill_through_the_artifact_and_its_file(cli, tmp_path):
    recipe = _write(tmp_path, teacher={}, train={"steps": 2, "batch_size": 4, "objective": "arcface"},
                    prune={"importance": "faces", "sparsity": 0.5},
                    retrain={"steps": 1, "batch_size": 4, "objective": "arcdistill"})
    out = tmp_path / "run"
    code, _o, err = cli("run", recipe, "--out", out)
    assert code == 0, err
    header = load_file(str(out / "header.safetensors"))["weight"]
    assert header.shape[0] == 6  # one row per class: the trained head, handed to arcdistill (the run needs it)


def test_unknown_needs_and_bad_declarations_are_plugin_errors():
    registry = Registry()
    register = make_register(registry, "loss", "author", "author-dist")
    with pytest.raises(PluginError, match=r"loss 'l': needs unknown 'bogus'; a component can need 'teacher', 'data', "
                                          r"'grad' or 'artifact:NAME'"):
        register("l", lambda: None, needs={"bogus"})
    with pytest.raises(PluginError, match="needs must be a collection of names"):
        register("l", lambda: None, needs="teacher")
    register("ok", lambda: None, needs={"teacher", "artifact:header"}, produces={"other"})
    assert registry.get("loss", "ok").needs == {"teacher", "artifact:header"}
    assert registry.producers_of("other") == ["loss 'ok'"]
    register("dyn", lambda: None, needs=lambda options: {"bogus"})  # a function is checked when it is asked
    with pytest.raises(PluginError, match="needs unknown 'bogus'"):
        registry.get("loss", "dyn").needs_for(None)


def test_artifact_store_phases_files_and_the_missing_message(tmp_path):
    store = ArtifactStore(tmp_path, producers=lambda name: ["loss 'maker'"])
    first, second = torch.ones(2, 3), torch.zeros(2, 3)
    store.publish("thing", first, phase="train", producer="maker", write=True)
    store.publish("thing", second, phase="retrain", producer="maker")
    assert store.get("thing").value is second and store.get("thing", "train").value is first
    assert torch.equal(load_file(str(tmp_path / "thing.safetensors"))["tensor"], first)
    with pytest.raises(UserError, match=r"^me needs the artifact 'other', which this run did not produce "
                                        r"\(produced by loss 'maker'\); try x$"):
        store.require("other", "me", hint="try x")
    with pytest.raises(TypeError, match="must be a tensor or a module"):
        store.publish("bad", [1], phase="train", producer="maker")
