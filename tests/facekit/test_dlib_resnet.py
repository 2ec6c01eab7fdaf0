"""dlib face ResNet port: TF.js manifest reading, architecture rules, and the real weights on Olivetti."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from corecompress_facekit.models.dlib_resnet import (DataFormatError, DlibFaceResNet, DlibResidualBlock,
                                                  load_dlib_resnet, preprocess_grey64,
                                                  read_tfjs_weights)


def _shared_data() -> Path:
    override = os.environ.get("CORECOMPRESS_SHARED_DATA")
    return Path(override) if override else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data missing: {path}")
    return path


# --- a synthetic TF.js manifest written independently of the loader --------------------------------

def _tfjs_entries(model: DlibFaceResNet) -> list[tuple[str, np.ndarray]]:
    """(manifest name, TF.js-layout array) for every weight of ``model``, in manifest order."""
    entries = []

    def unit(prefix: str, module) -> None:
        entries.append((f"{prefix}/conv/filters", module.conv.weight.detach().permute(2, 3, 1, 0).numpy()))
        entries.append((f"{prefix}/conv/bias", module.conv.bias.detach().numpy()))
        entries.append((f"{prefix}/scale/weights", module.scale.weight.detach().numpy()))
        entries.append((f"{prefix}/scale/biases", module.scale.bias.detach().numpy()))

    unit("conv32_down", model.conv32_down)
    for name in model.block_names:
        unit(f"{name}/conv1", getattr(model, name).conv1)
        unit(f"{name}/conv2", getattr(model, name).conv2)
    entries.append(("fc", model.fc.weight.detach().t().numpy()))
    return entries


def _write_manifest(folder: Path, entries, quantise=lambda name: True, drop=(), reshape=None,
                    truncate: int = 0) -> Path:
    specs, chunks = [], []
    for name, array in entries:
        if name in drop:
            continue
        array = np.ascontiguousarray(array, dtype=np.float32)
        if reshape and name in reshape:
            array = np.zeros(reshape[name], dtype=np.float32)
        spec = {"name": name, "shape": list(array.shape), "dtype": "float32"}
        if quantise(name):
            lo, hi = float(array.min()), float(array.max())
            scale = (hi - lo) / 255 if hi > lo else 1.0
            codes = np.round((array - lo) / scale).astype(np.uint8)
            spec["quantization"] = {"dtype": "uint8", "scale": scale, "min": lo}
            chunks.append(codes.tobytes())
        else:
            chunks.append(array.astype("<f4").tobytes())
        specs.append(spec)
    data = b"".join(chunks)
    (folder / "weights.bin").write_bytes(data[:len(data) - truncate])
    manifest = folder / "face_recognition_model-weights_manifest.json"
    manifest.write_text(json.dumps([{"paths": ["weights.bin"], "weights": specs}]))
    return manifest


@pytest.fixture(scope="module")
def random_model() -> DlibFaceResNet:
    torch.manual_seed(0)
    model = DlibFaceResNet()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    return model


def test_manifest_round_trip_float32_is_exact_and_uint8_within_half_a_step(tmp_path, random_model):
    entries = _tfjs_entries(random_model)
    float_names = {n for n, _ in entries if n.startswith("conv64_")}  # mixed, like the real file
    manifest = _write_manifest(tmp_path, entries, quantise=lambda n: n not in float_names)
    loaded = load_dlib_resnet(tmp_path)  # folder form
    assert not loaded.training
    reference = random_model.state_dict()
    for key, value in loaded.state_dict().items():
        if key == "pixel_mean":
            continue
        expected = reference[key]
        assert value.shape == expected.shape, key
        tf_name = key.replace(".", "/").replace("conv/weight", "conv/filters").replace(
            "scale/weight", "scale/weights").replace("scale/bias", "scale/biases").replace("fc/weight", "fc")
        if tf_name in float_names:
            assert torch.equal(value, expected), key
        else:
            step = float(expected.max() - expected.min()) / 255
            assert (value - expected).abs().max().item() <= 0.5 * step + 1e-7, key
    # the manifest file itself is accepted as well
    assert torch.equal(load_dlib_resnet(manifest).fc.weight, loaded.fc.weight)


def test_hwio_to_oihw_and_fc_transpose(tmp_path, random_model):
    _write_manifest(tmp_path, _tfjs_entries(random_model), quantise=lambda n: False)
    weights = read_tfjs_weights(tmp_path)
    loaded = load_dlib_resnet(tmp_path)
    hwio = weights["conv64_down/conv1/conv/filters"]
    assert hwio.shape == (3, 3, 32, 64)
    # element [kh=2, kw=0, in=5, out=7] must land at [out=7, in=5, kh=2, kw=0]
    assert loaded.conv64_down.conv1.conv.weight[7, 5, 2, 0].item() == hwio[2, 0, 5, 7]
    assert loaded.fc.weight[3, 200].item() == weights["fc"][200, 3]
    x = torch.rand(1, 3, 150, 150) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), random_model(x))


def test_loader_errors_name_the_file_and_weight(tmp_path, random_model):
    entries = _tfjs_entries(random_model)
    with pytest.raises(FileNotFoundError, match="manifest"):
        load_dlib_resnet(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="face_recognition_model-weights_manifest.json"):
        load_dlib_resnet(tmp_path)
    manifest = _write_manifest(tmp_path, entries, drop={"conv128_1/conv2/scale/biases"})
    with pytest.raises(DataFormatError, match="'conv128_1/conv2/scale/biases' of dlib's face ResNet is missing"):
        load_dlib_resnet(manifest)
    _write_manifest(tmp_path, entries, reshape={"conv32_2/conv1/conv/filters": (3, 3, 32, 16)})
    with pytest.raises(DataFormatError, match=r"'conv32_2/conv1/conv/filters' has shape \[3, 3, 32, 16\]"):
        load_dlib_resnet(manifest)
    _write_manifest(tmp_path, entries + [("extra/thing", np.zeros(3))])
    with pytest.raises(DataFormatError, match="'extra/thing' is not part"):
        load_dlib_resnet(manifest)
    _write_manifest(tmp_path, entries + entries[:1])
    with pytest.raises(DataFormatError, match="'conv32_down/conv/filters' appears twice"):
        load_dlib_resnet(manifest)
    _write_manifest(tmp_path, entries, truncate=10)
    with pytest.raises(DataFormatError, match="truncated at 'fc'"):
        load_dlib_resnet(manifest)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(FileNotFoundError, match="weights.bin"):
        load_dlib_resnet(manifest)
    manifest.write_text("{not json")
    with pytest.raises(DataFormatError, match="not a JSON"):
        load_dlib_resnet(manifest)


def test_reader_handles_uint16_float16_and_several_shards(tmp_path):
    (tmp_path / "a.bin").write_bytes(np.array([0, 2, 65535], "<u2").tobytes())
    (tmp_path / "b.bin").write_bytes(np.array([1.5, -2.0], "<f2").tobytes() + np.array([7], "<f4").tobytes())
    specs = [{"name": "u16", "shape": [3], "dtype": "float32",
              "quantization": {"dtype": "uint16", "scale": 0.5, "min": -1.0}},
             {"name": "f16", "shape": [1, 2], "dtype": "float32", "quantization": {"dtype": "float16"}},
             {"name": "f32", "shape": [1], "dtype": "float32"}]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"paths": ["a.bin", "b.bin"], "weights": specs}]))
    weights = read_tfjs_weights(manifest)
    np.testing.assert_array_equal(weights["u16"], [-1.0, 0.0, 32766.5])
    np.testing.assert_array_equal(weights["f16"], [[1.5, -2.0]])
    np.testing.assert_array_equal(weights["f32"], [7.0])
    assert all(w.dtype == np.float32 for w in weights.values())


def test_down_block_pools_shortcut_pads_channels_and_conv_path():
    """Hand-computed: conv path = constant 1 on its valid 3×3 area, shortcut = 2×2 mean of the input."""
    block = DlibResidualBlock(2, 3, 4, down=True)
    with torch.no_grad():
        for unit in (block.conv1, block.conv2):
            unit.conv.weight.zero_()
            unit.conv.bias.zero_()
            unit.scale.weight.zero_()
        block.conv1.scale.bias.zero_()
        block.conv2.scale.bias.fill_(1.0)
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).view(1, 2, 8, 8)
    out = block(x)  # 8×8 → conv path 3×3 (valid, stride 2), shortcut 4×4
    assert out.shape == (1, 4, 4, 4)
    pooled = x.view(1, 2, 4, 2, 4, 2).mean(dim=(3, 5))
    expected = torch.zeros(1, 4, 4, 4)
    expected[:, :2] = pooled
    expected[:, :, :3, :3] += 1.0  # the conv path fills the top-left; its bottom row/right column are zero
    torch.testing.assert_close(out, expected)


def test_stride1_block_is_identity_plus_relu_and_spatial_sizes():
    block = DlibResidualBlock(3, 3, 3, down=False)
    with torch.no_grad():
        block.conv2.scale.weight.zero_()
        block.conv2.scale.bias.zero_()
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(block(x), F.relu(x))
    model = DlibFaceResNet()
    sizes = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda module, args, out, name=name: sizes.__setitem__(name, tuple(out.shape[1:])))
        for name in ("conv32_3", "conv64_down", "conv128_down", "conv256_down", "conv256_down_out")]
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 150, 150)).shape == (1, 128)
    for hook in hooks:
        hook.remove()
    # 150 → 72 (7×7/2 valid) → 35 (3×3/2 max-pool) → 17 → 8 → 4 (3 padded to 4) → 2 (1 padded to 2)
    assert sizes == {"conv32_3": (32, 35, 35), "conv64_down": (64, 17, 17), "conv128_down": (128, 8, 8),
                     "conv256_down": (256, 4, 4), "conv256_down_out": (256, 2, 2)}


def test_pruned_inner_widths_still_run():
    model = DlibFaceResNet(inner_widths={"conv64_1": 10, "conv256_down": 20})
    assert model.conv64_1.conv1.conv.out_channels == 10 and model.conv64_1.conv2.conv.in_channels == 10
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 150, 150)).shape == (1, 128)
    with pytest.raises(ValueError, match="conv99"):
        DlibFaceResNet(inner_widths={"conv99": 3})


def test_parameter_count_and_macs():
    with torch.device("meta"):
        model = DlibFaceResNet()
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, 150, 150))
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - 5.61e6) < 0.05e6
    conv_fc_macs = counter.get_total_flops() // 2
    # the spec's 271.5 M also counts the per-channel affine multiply of every conv unit
    affine_macs = 72 * 72 * 32 + 6 * 35 * 35 * 32 + 8 * 17 * 17 * 64 + 6 * 8 * 8 * 128 \
        + 2 * 3 * 3 * 256 + 4 * 4 * 4 * 256 + 2 * 1 * 1 * 256
    assert abs(conv_fc_macs + affine_macs - 271.5e6) < 0.1e6


def test_preprocess_grey64_shapes_values_and_modes():
    images = np.array([[[0, 255], [100, 50]]], dtype=np.uint8)
    out = preprocess_grey64(images, size=4)
    assert out.shape == (1, 3, 4, 4) and out.dtype == torch.float32
    assert torch.equal(out[:, 0], out[:, 2])
    assert out[0, 0, 0, 0].item() == 0.0 and out[0, 0, 0, 3].item() == 255.0  # corners keep their values
    bilinear = preprocess_grey64(images, size=4, mode="bilinear")
    # half-pixel bilinear: second column = 0.75·0 + 0.25·255 on the first row
    assert bilinear[0, 0, 0, 1].item() == pytest.approx(63.75)
    assert 0.0 <= float(preprocess_grey64(images, size=9, mode="bicubic").min())
    with pytest.raises(ValueError, match="uint8"):
        preprocess_grey64(images.astype(np.float32), size=4)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        preprocess_grey64(images[0])


# --- the real weights -----------------------------------------------------------------------------

def _pair_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Mann-Whitney AUC: P(score of a same pair > score of a different pair), ties counting half."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based ranks, ties share their mean
    positives, negatives = int(same.sum()), int((~same).sum())
    return float((ranks[same].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def test_pair_auc_helper_on_a_hand_computed_case():
    # positives 0.9, 0.4; negatives 0.5, 0.1, 0.4 → wins 3 + 1 + 0.5 (tie) = 4.5 of 6
    assert _pair_auc(np.array([0.9, 0.4, 0.5, 0.1, 0.4]), np.array([1, 1, 0, 0, 0], bool)) == 0.75


def test_real_weights_dequantise_as_byte_times_scale_plus_min():
    folder = _require(_shared_data() / "face-api-resnet")
    manifest = json.loads((folder / "face_recognition_model-weights_manifest.json").read_text())
    first = manifest[0]["weights"][0]
    count = math.prod(first["shape"])
    raw = np.frombuffer((folder / "face_recognition_model.bin").read_bytes()[:count], dtype=np.uint8)
    q = first["quantization"]
    weights = read_tfjs_weights(folder)
    np.testing.assert_allclose(weights[first["name"]].reshape(-1), raw * q["scale"] + q["min"], rtol=1e-6)
    assert weights["conv64_1/conv1/conv/filters"].dtype == np.float32  # an unquantised entry


def test_real_weights_recognise_olivetti_faces():
    """Spec figures (all 400 images): AUC 0.9988, balanced accuracy 98.4 %, 1-NN 100 %. A 10-person
    subset (every 4th person; AUC 0.9989 there) keeps the test fast; raw pixels score far lower."""
    from scipy.io import loadmat

    weights = _require(_shared_data() / "face-api-resnet" / "face_recognition_model-weights_manifest.json")
    mat = _require(_shared_data() / "olivetti" / "olivettifaces.mat")
    faces = loadmat(str(mat))["faces"]
    images = faces.T.reshape(400, 64, 64).transpose(0, 2, 1)
    identities = np.arange(400) // 10
    keep = identities % 4 == 0  # 10 people, all 10 images each
    images, identities = images[keep], identities[keep]
    model = load_dlib_resnet(weights)
    with torch.no_grad():
        descriptors = model(preprocess_grey64(images))
    assert descriptors.shape == (100, 128)
    similarity = (F.normalize(descriptors, dim=1) @ F.normalize(descriptors, dim=1).T).numpy()
    upper = np.triu_indices(len(images), 1)
    same = identities[upper[0]] == identities[upper[1]]
    auc = _pair_auc(similarity[upper], same)
    assert auc >= 0.998  # 0.99885 here; padding the conv path top/left instead gives 0.9952
    order = np.argsort(-similarity[upper])
    true_pos = np.cumsum(same[order]) / same.sum()
    true_neg = 1 - np.cumsum(~same[order]) / (~same).sum()
    assert ((true_pos + true_neg) / 2).max() >= 0.97  # best-threshold (balanced) verification accuracy
    np.fill_diagonal(similarity, -np.inf)
    assert (identities[similarity.argmax(axis=1)] == identities).mean() == 1.0
    pixels = F.normalize(torch.tensor(images.reshape(len(images), -1), dtype=torch.float32), dim=1)
    assert _pair_auc((pixels @ pixels.T).numpy()[upper], same) < auc - 0.05
