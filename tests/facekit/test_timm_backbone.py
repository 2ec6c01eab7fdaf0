"""timm models as face backbones: embedding head, img_size handling, local weights, clear errors."""
from __future__ import annotations

import pytest
import torch

from corecompress_facekit.models.dlib_resnet import DataFormatError
from corecompress_facekit.models.timm_backbone import TimmFaceBackbone, UnknownModelError

timm = pytest.importorskip("timm")


def test_cnn_backbone_gets_linear_bn_embedding_head():
    model = TimmFaceBackbone("resnet10t", embedding_size=24, img_size=64).eval()
    assert model.feature_dim == 512
    assert isinstance(model.fc, torch.nn.Linear) and model.fc.in_features == 512
    assert isinstance(model.features, torch.nn.BatchNorm1d) and model.features.num_features == 24
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        expected = model.features(model.fc(model.backbone(x)))
    assert out.shape == (2, 24)
    torch.testing.assert_close(out, expected)


def test_vit_takes_img_size_and_trains():
    model = TimmFaceBackbone("vit_tiny_patch16_224", embedding_size=16, img_size=32)
    assert model.backbone.pos_embed.shape[1] == 1 + (32 // 16) ** 2
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 16)
    out.square().mean().backward()
    assert model.backbone.patch_embed.proj.weight.grad is not None


def test_unknown_model_names_suggest_close_matches():
    with pytest.raises(UnknownModelError, match=r"'resnet10tt'.*resnet10t"):
        TimmFaceBackbone("resnet10tt")
    assert issubclass(UnknownModelError, ValueError)


def test_local_weights_load_from_safetensors_and_torch_files(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm.create_model("resnet10t", pretrained=False, num_classes=7).eval()  # with a classifier
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        reference = source.forward_head(source.forward_features(x), pre_logits=True)
    for name in ("w.safetensors", "w.pth"):
        model = TimmFaceBackbone("resnet10t", embedding_size=8, pretrained_path=tmp_path / name).eval()
        with torch.no_grad():
            torch.testing.assert_close(model.backbone(x), reference)
    # a whole TimmFaceBackbone state dict (backbone + embedding head) round-trips
    model.features.running_mean.fill_(0.25)
    torch.save(model.state_dict(), tmp_path / "full.pt")
    again = TimmFaceBackbone("resnet10t", embedding_size=8, pretrained_path=tmp_path / "full.pt").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_vit_weights_are_adapted_to_a_new_img_size(tmp_path):
    from safetensors.torch import save_file

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=64)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    model = TimmFaceBackbone("vit_tiny_patch16_224", embedding_size=8, img_size=32,
                             pretrained_path=tmp_path / "vit.safetensors")
    assert model.backbone.pos_embed.shape == (1, 5, 192)
    torch.testing.assert_close(model.backbone.patch_embed.proj.weight, source.patch_embed.proj.weight)


def test_bad_weight_files_give_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        TimmFaceBackbone("resnet10t", pretrained_path=tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataFormatError, match="junk.pt: cannot read weights"):
        TimmFaceBackbone("resnet10t", pretrained_path=tmp_path / "junk.pt")
    state = timm.create_model("resnet10t", pretrained=False, num_classes=0).state_dict()
    state.pop("layer2.0.conv1.weight")
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(DataFormatError, match="no weight for 'layer2.0.conv1.weight'"):
        TimmFaceBackbone("resnet10t", pretrained_path=tmp_path / "partial.pt")
    other = timm.create_model("resnet14t", pretrained=False, num_classes=0)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(DataFormatError, match="other.pt"):
        TimmFaceBackbone("resnet10t", pretrained_path=tmp_path / "other.pt")
    wrong = timm.create_model("resnet10t", pretrained=False, num_classes=0).state_dict()
    wrong["conv1.0.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(wrong, tmp_path / "shape.pt")
    with pytest.raises(DataFormatError, match="size mismatch for conv1.0.weight"):
        TimmFaceBackbone("resnet10t", pretrained_path=tmp_path / "shape.pt")


def _cnn_recipe(tmp_path):
    import yaml

    recipe = {"version": 1, "name": "timm-cnn-filters", "seed": 0, "threads": 1,
              "model": {"name": "timm", "model_name": "resnet10t", "embedding_size": 16, "img_size": 32},
              "data": {"name": "synthetic_faces", "identities": 4, "images_per_identity": 4, "eval_identities": 2,
                       "eval_images_per_identity": 2, "eval_pairs": 4, "image_size": 32},
              "train": {"steps": 1, "batch_size": 8, "objective": {"name": "arcface"}}, "evaluate": [],
              "prune": {"importance": "faces", "sparsity": 0.3, "targets": ["filters"], "apply": "physical"},
              "retrain": {"steps": 1, "batch_size": 8, "objective": {"name": "arcface"}}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_timm_cnn_prunes_its_filters_by_faces_in_a_run(cli, tmp_path):
    pytest.importorskip("torch_pruning")
    import json

    code, _out, err = cli("run", _cnn_recipe(tmp_path), "--out", tmp_path / "run")
    assert code == 0, err
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["groups"] and all(g["kind"] == "filters" and len(g["keep"]) < g["size"] for g in plan["groups"].values())


def test_a_timm_cnn_without_torch_pruning_is_one_line_naming_the_extra(cli, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    code, _out, err = cli("run", _cnn_recipe(tmp_path), "--out", tmp_path / "run")
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "corecompress[torch-pruning]" in errors[0], err
