"""dlib's metric-learning face ResNet, loaded from the face-api TensorFlow.js weight files.

dlib's face recognition ResNet (D. E. King, dlib, http://dlib.net; "Dlib-ml", JMLR 2009), 99.38 % on LFW
per dlib. The weights are dlib's
``dlib_face_recognition_resnet_model_v1`` as re-exported by the MIT-licensed npm package
``@vladmandic/face-api`` 1.7.15 (``face_recognition_model-weights_manifest.json`` + ``.bin``);
nothing here downloads them, the caller passes their location.

Module layout (chosen for pruning): every conv unit is a :class:`ConvUnit` with ``.conv`` (Conv2d with
bias) and ``.scale`` (:class:`AffineScale`, dlib's folded batch norm ``y = x·a + b``; ``a`` is the
network-slimming importance). Residual blocks (:class:`DlibResidualBlock`) have ``conv1``/``conv2``;
the inner channels (``conv1`` outputs = ``conv2`` inputs) can be pruned freely, the block outputs are
tied through the residual adds. The forward pass derives every padding from tensor shapes, so a pruned
model (smaller convs swapped in) still runs.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

DLIB_PIXEL_MEAN_RGB: tuple[float, float, float] = (122.782, 117.001, 104.298)
"""Per-channel mean subtracted before the /255 scaling (dlib's input pre-processing)."""

DLIB_INPUT_SIZE = 150
DLIB_EMBEDDING_SIZE = 128
MANIFEST_FILE_NAME = "face_recognition_model-weights_manifest.json"

# (block name, input channels, output channels, down-sampling?) in dlib's forward order.
DLIB_BLOCKS: tuple[tuple[str, int, int, bool], ...] = (
    ("conv32_1", 32, 32, False),
    ("conv32_2", 32, 32, False),
    ("conv32_3", 32, 32, False),
    ("conv64_down", 32, 64, True),
    ("conv64_1", 64, 64, False),
    ("conv64_2", 64, 64, False),
    ("conv64_3", 64, 64, False),
    ("conv128_down", 64, 128, True),
    ("conv128_1", 128, 128, False),
    ("conv128_2", 128, 128, False),
    ("conv256_down", 128, 256, True),
    ("conv256_1", 256, 256, False),
    ("conv256_2", 256, 256, False),
    ("conv256_down_out", 256, 256, True),
)


from corecompress.errors import DataFormatError  # noqa: E402 - shared by every reader


class AffineScale(nn.Module):
    """Per-channel affine map ``y = x·weight + bias`` (dlib's ``affine`` layer = folded batch norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class ConvUnit(nn.Module):
    """Conv2d (+bias) → affine scale → optional ReLU: one dlib "conv unit" (BatchNorm folded)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 padding: int, relu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=padding, bias=True)
        self.scale = AffineScale(out_channels)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.scale(self.conv(x))
        return F.relu(x) if self.relu else x


class DlibResidualBlock(nn.Module):
    """Two 3×3 conv units plus shortcut, then ReLU.

    Stride-1 blocks: padding 1, identity shortcut. Down-sampling blocks: ``conv1`` stride 2 without
    padding ("valid"); shortcut = 2×2/2 average pool with zero channels appended up to the output
    width; where the conv path is one row/column smaller than the pooled shortcut it is zero-padded at
    the bottom/right, as dlib does.
    """

    def __init__(self, in_channels: int, inner_channels: int, out_channels: int, down: bool) -> None:
        super().__init__()
        if not down and in_channels != out_channels:
            raise ValueError(f"an identity-shortcut block needs in == out channels, "
                             f"got {in_channels} → {out_channels}")
        self.down = down
        self.conv1 = ConvUnit(in_channels, inner_channels, 3, stride=2 if down else 1,
                              padding=0 if down else 1, relu=True)
        self.conv2 = ConvUnit(inner_channels, out_channels, 3, stride=1, padding=1, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.conv1(x))
        if self.down:
            shortcut = F.avg_pool2d(x, kernel_size=2, stride=2)
            extra_channels = out.shape[1] - shortcut.shape[1]
            if extra_channels < 0:
                raise RuntimeError(f"down block output has {out.shape[1]} channels, fewer than its "
                                   f"input's {shortcut.shape[1]}")
            extra_rows = shortcut.shape[2] - out.shape[2]
            extra_cols = shortcut.shape[3] - out.shape[3]
            if extra_rows or extra_cols:
                out = F.pad(out, (0, extra_cols, 0, extra_rows))
            if extra_channels:
                shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, extra_channels))
        else:
            shortcut = x
        return F.relu(out + shortcut)


class DlibFaceResNet(nn.Module):
    """dlib's face ResNet (5.61 M parameters, 271.5 M MACs at 150×150; dlib's v1 model).

    Input: float tensor (B, 3, 150, 150), RGB, values 0–255 (see :func:`preprocess_grey64`).
    Output: the 128-d descriptor (unnormalised; compare with cosine or Euclidean distance).
    Sub-module names follow the manifest (``conv32_down`` is the stem, ``conv32_1`` … ``fc``), so
    ``<block>.<conv1|conv2>.<conv|scale>.<weight|bias>`` maps one-to-one to the manifest names.
    """

    def __init__(self, inner_widths: dict[str, int] | None = None) -> None:
        super().__init__()
        inner_widths = dict(inner_widths or {})
        self.register_buffer("pixel_mean", torch.tensor(DLIB_PIXEL_MEAN_RGB).view(1, 3, 1, 1))
        self.conv32_down = ConvUnit(3, 32, 7, stride=2, padding=0, relu=True)
        self.block_names: tuple[str, ...] = tuple(name for name, *_ in DLIB_BLOCKS)
        for name, c_in, c_out, down in DLIB_BLOCKS:
            inner = inner_widths.pop(name, c_out)
            self.add_module(name, DlibResidualBlock(c_in, inner, c_out, down))
        if inner_widths:
            raise ValueError(f"unknown block name(s) in inner_widths: {sorted(inner_widths)}")
        self.fc = nn.Linear(256, DLIB_EMBEDDING_SIZE, bias=False)

    def blocks(self) -> list[DlibResidualBlock]:
        """The residual blocks in forward order."""
        return [getattr(self, name) for name in self.block_names]

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.pixel_mean) / 255.0
        x = F.max_pool2d(self.conv32_down(x), kernel_size=3, stride=2)
        for block in self.blocks():
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))


# ---------------------------------------------------------------------------------------------
# TensorFlow.js layers-manifest reading
# ---------------------------------------------------------------------------------------------

_NUMPY_DTYPES = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8,
                 "uint16": np.uint16, "float16": np.float16, "bool": np.bool_}


def _resolve_manifest(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        candidate = path / MANIFEST_FILE_NAME
        if candidate.is_file():
            return candidate
        found = sorted(path.glob("*manifest.json"))
        if len(found) == 1:
            return found[0]
        raise FileNotFoundError(f"{path}: no {MANIFEST_FILE_NAME} (face-api weights manifest) in this folder")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: face-api weights manifest not found")
    return path


def _decode_tensor(spec: dict[str, Any], data: memoryview, offset: int, manifest: Path
                   ) -> tuple[np.ndarray, int]:
    """Decode one manifest entry starting at ``offset``; returns the float array and the new offset."""
    name = spec.get("name", "?")
    try:
        shape = [int(d) for d in spec["shape"]]
        dtype = spec.get("dtype", "float32")
    except (KeyError, TypeError, ValueError) as err:
        raise DataFormatError(f"{manifest}: weight {name!r} has no valid shape ({err})") from None
    count = math.prod(shape)
    quant = spec.get("quantization")
    stored = quant.get("dtype") if quant else dtype
    if stored not in _NUMPY_DTYPES:
        raise DataFormatError(f"{manifest}: weight {name!r} uses unsupported dtype {stored!r}")
    np_dtype = np.dtype(_NUMPY_DTYPES[stored]).newbyteorder("<")
    nbytes = count * np_dtype.itemsize
    if offset + nbytes > len(data):
        raise DataFormatError(f"{manifest}: weight data is truncated at {name!r} "
                              f"(needs bytes {offset}..{offset + nbytes}, file has {len(data)})")
    raw = np.frombuffer(data[offset:offset + nbytes], dtype=np_dtype)
    if quant and stored in ("uint8", "uint16"):
        try:
            scale, minimum = float(quant["scale"]), float(quant["min"])
        except (KeyError, TypeError, ValueError):
            raise DataFormatError(f"{manifest}: weight {name!r} is quantised without scale/min") from None
        values = raw.astype(np.float64) * scale + minimum
    else:
        values = raw
    return values.astype(np.float32).reshape(shape), offset + nbytes


def read_tfjs_weights(manifest_path: str | Path) -> dict[str, np.ndarray]:
    """Read a TensorFlow.js weights manifest and its binary shards into float32 arrays by name.

    Handles unquantised float32 and uint8/uint16 quantisation (value = q × scale + min) as well as
    float16; tensors lie back to back in the concatenated shards of each group, in manifest order.
    """
    manifest = _resolve_manifest(manifest_path)
    try:
        groups = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataFormatError(f"{manifest}: not a JSON weights manifest ({err})") from None
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise DataFormatError(f"{manifest}: expected a JSON list of weight groups")
    weights: dict[str, np.ndarray] = {}
    for group in groups:
        paths, specs = group.get("paths"), group.get("weights")
        if not isinstance(paths, list) or not isinstance(specs, list):
            raise DataFormatError(f"{manifest}: a weight group lacks 'paths' or 'weights'")
        chunks = []
        for rel in paths:
            shard = manifest.parent / rel
            if not shard.is_file():
                raise FileNotFoundError(f"{shard}: weight file named in {manifest.name} not found")
            chunks.append(shard.read_bytes())
        data = memoryview(b"".join(chunks))
        offset = 0
        for spec in specs:
            array, offset = _decode_tensor(spec, data, offset, manifest)
            name = str(spec.get("name"))
            if name in weights:
                raise DataFormatError(f"{manifest}: weight {name!r} appears twice")
            weights[name] = array
        if offset != len(data):
            raise DataFormatError(f"{manifest}: weight files hold {len(data)} bytes but the manifest "
                                  f"describes {offset}")
    return weights


def _expected_manifest_shapes(model: DlibFaceResNet) -> dict[str, tuple[list[int], str, str]]:
    """Manifest name → (TF.js shape, torch state-dict key, kind) for every tensor of ``model``."""
    expected: dict[str, tuple[list[int], str, str]] = {}

    def add_unit(prefix_tf: str, prefix_pt: str, unit: ConvUnit) -> None:
        out_c, in_c, kh, kw = unit.conv.weight.shape
        expected[f"{prefix_tf}/conv/filters"] = ([kh, kw, in_c, out_c], f"{prefix_pt}.conv.weight", "hwio")
        expected[f"{prefix_tf}/conv/bias"] = ([out_c], f"{prefix_pt}.conv.bias", "vector")
        expected[f"{prefix_tf}/scale/weights"] = ([out_c], f"{prefix_pt}.scale.weight", "vector")
        expected[f"{prefix_tf}/scale/biases"] = ([out_c], f"{prefix_pt}.scale.bias", "vector")

    add_unit("conv32_down", "conv32_down", model.conv32_down)
    for name, block in zip(model.block_names, model.blocks()):
        add_unit(f"{name}/conv1", f"{name}.conv1", block.conv1)
        add_unit(f"{name}/conv2", f"{name}.conv2", block.conv2)
    out_f, in_f = model.fc.weight.shape
    expected["fc"] = ([in_f, out_f], "fc.weight", "in_out")
    return expected


def dlib_state_dict_from_tfjs(weights: dict[str, np.ndarray], model: DlibFaceResNet,
                              source: str = "manifest") -> dict[str, Tensor]:
    """Map TF.js arrays to ``model``'s state-dict keys (HWIO → OIHW, fc (in,out) → (out,in)).

    Raises :class:`DataFormatError` naming the first missing, unexpected or mis-shaped weight.
    """
    expected = _expected_manifest_shapes(model)
    unexpected = [name for name in weights if name not in expected]
    if unexpected:
        raise DataFormatError(f"{source}: weight {unexpected[0]!r} is not part of dlib's face ResNet "
                              f"({len(unexpected)} unexpected in all)")
    state: dict[str, Tensor] = {}
    for name, (shape, key, kind) in expected.items():
        if name not in weights:
            raise DataFormatError(f"{source}: weight {name!r} of dlib's face ResNet is missing")
        array = weights[name]
        if list(array.shape) != shape:
            raise DataFormatError(f"{source}: weight {name!r} has shape {list(array.shape)}, "
                                  f"expected {shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if kind == "hwio":
            tensor = tensor.permute(3, 2, 0, 1)
        elif kind == "in_out":
            tensor = tensor.t()
        state[key] = tensor.contiguous()
    return state


def load_dlib_resnet(path: str | Path) -> DlibFaceResNet:
    """Build :class:`DlibFaceResNet` with the face-api weights; ``path`` = folder or manifest file.

    Returns the model in eval mode (it has no batch norm or dropout, so the mode only matters to
    callers that check it).
    """
    manifest = _resolve_manifest(path)
    model = DlibFaceResNet()
    state = dlib_state_dict_from_tfjs(read_tfjs_weights(manifest), model, source=str(manifest))
    state["pixel_mean"] = model.pixel_mean.clone()
    model.load_state_dict(state, strict=True)
    return model.eval()


def _resize_pil_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a declared dependency of the face plugin
        raise ImportError("preprocess_grey64(mode='pil_bilinear') needs Pillow; install it or pass "
                          "mode='bilinear'") from None
    resample = Image.Resampling.BILINEAR
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), resample)) for im in images])


def preprocess_grey64(images: np.ndarray | Tensor, size: int = DLIB_INPUT_SIZE,
                      mode: str = "pil_bilinear") -> Tensor:
    """Grey faces (N, H, W) uint8 (e.g. Olivetti 64×64) → (N, 3, size, size) float32, values 0–255.

    ``mode="pil_bilinear"`` (default) resizes with Pillow's bilinear filter to uint8, which reproduces
    the Olivetti figures of dlib's own C++ model exactly (pair AUC 0.9988, balanced best-threshold accuracy 98.35 %,
    1-NN 100 %). Any ``torch.nn.functional.interpolate`` mode is accepted too ("bilinear" with
    half-pixel centres: AUC 0.9988 / 98.33 %; "bicubic": 0.9989 / 98.39 %), without rounding.
    The grey channel is repeated to RGB.
    """
    array = images.cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if array.ndim != 3:
        raise ValueError(f"expected grey images shaped (N, H, W), got {tuple(array.shape)}")
    if mode == "pil_bilinear":
        if array.dtype != np.uint8:
            raise ValueError(f"mode 'pil_bilinear' needs uint8 images, got {array.dtype}")
        x = torch.from_numpy(_resize_pil_bilinear(array, size).astype(np.float32)).unsqueeze(1)
    else:
        x = torch.from_numpy(array.astype(np.float32)).unsqueeze(1)
        corner_free = mode in ("nearest", "area", "nearest-exact")
        kwargs: dict[str, Any] = {} if corner_free else {"align_corners": False}
        x = F.interpolate(x, size=(size, size), mode=mode, **kwargs).clamp_(0.0, 255.0)
    return x.expand(-1, 3, -1, -1).contiguous()
