"""IResNet face backbones (improved ResNet of ArcFace, Deng et al. CVPR 2019; Duta et al. 2020).

The standard teachers of face-recognition distillation (the IResNet-50 teacher of AdaDistill, Boutros
et al., ECCV 2024: 43.6 M parameters, 6.31 GMACs at 112×112). Module and parameter names follow insightface's
``arcface_torch`` layout so that its checkpoints load with ``load_state_dict``: ``conv1``, ``bn1``,
``prelu``, ``layer1..4`` (blocks with ``bn1, conv1, bn2, prelu, conv2, bn3, downsample.0/1``),
``bn2``, ``dropout``, ``fc``, ``features``. Written from the architecture description, not from
insightface's code.

Block ("IBasicBlock", pre-activation style): BN → conv3×3 → BN → PReLU → conv3×3 (stride s) → BN,
plus the shortcut (identity, or conv1×1 stride s → BN when the shape changes). Every stage starts
with a stride-2 block, so a 112×112 input ends at 7×7; the head is BN2d → flatten → dropout →
Linear → BatchNorm1d (with its scale frozen at 1, as in arcface_torch).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

IRESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}
IRESNET_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)
BN_EPS = 1e-5


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Improved residual block: BN-conv-BN-PReLU-conv(stride)-BN + shortcut (no ReLU after the add)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.conv1 = _conv3x3(in_channels, channels)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.prelu = nn.PReLU(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn3 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels, eps=BN_EPS),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


def _stride2_size(size: int) -> int:
    """Output size of a 3×3 (or 1×1) stride-2 conv with padding 1 (resp. 0): ceil(size / 2)."""
    return (size + 1) // 2


class IResNet(nn.Module):
    """IResNet backbone: (B, 3, input_size, input_size) → (B, embedding_size).

    ``layers``/``widths`` give the blocks and channels of the four stages (stem width = widths[0]);
    the ``fc`` input size follows ``input_size`` (widths[-1] × ceil(input/16)²), so small CPU variants
    with, e.g., 64×64 inputs work. Input normalisation ((x/255 − 0.5)/0.5) is the data pipeline's job.
    """

    def __init__(self, layers: Sequence[int], widths: Sequence[int] = IRESNET_WIDTHS,
                 embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0) -> None:
        super().__init__()
        layers, widths = tuple(int(n) for n in layers), tuple(int(w) for w in widths)
        if len(layers) != 4 or len(widths) != 4 or min(layers) < 1 or min(widths) < 1:
            raise ValueError(f"IResNet needs 4 stages of ≥1 blocks and ≥1 channels, "
                             f"got layers={layers}, widths={widths}")
        if input_size < 16:
            raise ValueError(f"IResNet input_size must be ≥ 16, got {input_size}")
        self.input_size = input_size
        self.embedding_size = embedding_size
        self.conv1 = _conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0], eps=BN_EPS)
        self.prelu = nn.PReLU(widths[0])
        in_channels = widths[0]
        for index, (blocks, width) in enumerate(zip(layers, widths), start=1):
            stage = [IBasicBlock(in_channels, width, stride=2)]
            stage += [IBasicBlock(width, width) for _ in range(blocks - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*stage))
            in_channels = width
        spatial = input_size
        for _ in range(4):
            spatial = _stride2_size(spatial)
        self.bn2 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_channels * spatial * spatial, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=BN_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # arcface_torch keeps the embedding BN's scale fixed at 1 (only its shift is learnt).
        self.features.weight.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)
        return self.features(self.fc(self.dropout(x)))


def iresnet(depth: int, embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0) -> IResNet:
    """Standard IResNet-``depth`` (18, 34, 50, 100, 200) with insightface widths 64/128/256/512."""
    if depth not in IRESNET_LAYERS:
        raise ValueError(f"unknown IResNet depth {depth}; choose one of {sorted(IRESNET_LAYERS)}")
    return IResNet(IRESNET_LAYERS[depth], IRESNET_WIDTHS, embedding_size, input_size, dropout)


def iresnet18(embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0) -> IResNet:
    """IResNet-18: layers (2, 2, 2, 2)."""
    return iresnet(18, embedding_size, input_size, dropout)


def iresnet50(embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0) -> IResNet:
    """IResNet-50: layers (3, 4, 14, 3); 43.6 M parameters, 6.3 GMACs at 112×112."""
    return iresnet(50, embedding_size, input_size, dropout)


def iresnet100(embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0) -> IResNet:
    """IResNet-100: layers (3, 13, 30, 3)."""
    return iresnet(100, embedding_size, input_size, dropout)


def iresnet_small(widths: Sequence[int] = (16, 32, 64, 128), layers: Sequence[int] = (1, 1, 1, 1),
                  embedding_size: int = 128, input_size: int = 64, dropout: float = 0.0) -> IResNet:
    """A narrow, shallow IResNet for CPU distillation experiments.

    Defaults: 0.57 M parameters, 36 M MACs at 64×64, 128-d output (the dlib teacher's size).
    """
    return IResNet(layers, widths, embedding_size, input_size, dropout)
