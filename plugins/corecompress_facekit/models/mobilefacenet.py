"""MobileFaceNet (S. Chen, Y. Liu, X. Gao, Z. Han, "MobileFaceNets", CCBR 2018), 512-d embedding.

The student of AdaDistill (Boutros et al., ECCV 2024), which reports 1.20 M parameters, 0.22 GMACs at
112×112, 512-d embeddings. This is the MobileFaceNets paper's Table 1 network (the variant of the
face-distillation literature, not insightface's wider "mbf" with scale 2):

| input   | operator                         | t | c   | n | s |
|---------|----------------------------------|---|-----|---|---|
| 112²×3  | conv3×3                          | - | 64  | 1 | 2 |
| 56²×64  | depthwise conv3×3                | - | 64  | 1 | 1 |
| 56²×64  | bottleneck                       | 2 | 64  | 5 | 2 |
| 28²×64  | bottleneck                       | 4 | 128 | 1 | 2 |
| 14²×128 | bottleneck                       | 2 | 128 | 6 | 1 |
| 14²×128 | bottleneck                       | 4 | 128 | 1 | 2 |
| 7²×128  | bottleneck                       | 2 | 128 | 2 | 1 |
| 7²×128  | conv1×1                          | - | 512 | 1 | 1 |
| 7²×512  | linear GDConv7×7 (global depthwise) | - | 512 | 1 | 1 |
| 1²×512  | linear conv1×1 (here Linear) + BN | - | 512 | 1 | 1 |

A bottleneck = conv1×1 expand (t×) → depthwise 3×3 (stride s) → linear conv1×1 project, each with BN,
PReLU after the first two; stride-1 repeats add a residual. Measured at 112×112 with the default
512-d embedding: 1.2005 M parameters (incl. BN/PReLU), 0.2212 GMACs (FlopCounterMode, FLOPs/2),
matching AdaDistill's 1.20 M / 0.22 G; with a 128-d output 1.003 M / 0.2210 G (the paper: 0.99 M,
221 M). Attribute names follow the widely used PyTorch port of this network
(``conv1``, ``conv2_dw``, ``conv_23``, ``conv_3``, ``conv_34``, ``conv_4``, ``conv_45``, ``conv_5``,
``conv_6_sep``, ``conv_6_dw``, ``linear``, ``bn``) so that such checkpoints map by name.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ConvBNPReLU(nn.Module):
    """Conv (no bias) → BatchNorm → PReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.prelu = nn.PReLU(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.prelu(self.bn(self.conv(x)))


class ConvBN(nn.Module):
    """Conv (no bias) → BatchNorm, no activation ("linear" conv of MobileNetV2/MobileFaceNet)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class Bottleneck(nn.Module):
    """Inverted residual: 1×1 expand → depthwise 3×3 (stride) → linear 1×1 project (+x if residual)."""

    def __init__(self, in_channels: int, out_channels: int, expanded: int, stride: int,
                 residual: bool) -> None:
        super().__init__()
        if residual and (stride != 1 or in_channels != out_channels):
            raise ValueError("a residual bottleneck needs stride 1 and equal in/out channels")
        self.conv = ConvBNPReLU(in_channels, expanded, 1)
        self.conv_dw = ConvBNPReLU(expanded, expanded, 3, stride, 1, groups=expanded)
        self.project = ConvBN(expanded, out_channels, 1)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        return out + x if self.residual else out


class ResidualStage(nn.Module):
    """``num_blocks`` stride-1 residual bottlenecks of constant width."""

    def __init__(self, channels: int, expanded: int, num_blocks: int) -> None:
        super().__init__()
        self.model = nn.Sequential(*[Bottleneck(channels, channels, expanded, 1, residual=True)
                                     for _ in range(num_blocks)])

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def _scaled(channels: int, width: float) -> int:
    return max(8, int(round(channels * width / 8)) * 8) if width != 1.0 else channels


class MobileFaceNet(nn.Module):
    """MobileFaceNet: (B, 3, input_size, input_size) → (B, embedding_size) (see module docstring).

    ``width`` scales every channel count (rounded to multiples of 8; e.g. 0.5 for CPU experiments);
    ``blocks`` = residual repeats of the three residual stages (paper: 4, 6, 2); ``input_size`` sets
    the global depthwise (GDC) kernel to the final feature-map size (7 at 112, 4 at 64).
    """

    def __init__(self, embedding_size: int = 512, width: float = 1.0, input_size: int = 112,
                 blocks: tuple[int, int, int] = (4, 6, 2), feature_channels: int = 512) -> None:
        super().__init__()
        if width <= 0 or input_size < 16 or min(blocks) < 0:
            raise ValueError(f"invalid MobileFaceNet config: width={width}, input_size={input_size}, "
                             f"blocks={blocks}")
        c64, c128 = _scaled(64, width), _scaled(128, width)
        c_feat = _scaled(feature_channels, width)
        self.input_size = input_size
        self.embedding_size = embedding_size
        self.conv1 = ConvBNPReLU(3, c64, 3, 2, 1)
        self.conv2_dw = ConvBNPReLU(c64, c64, 3, 1, 1, groups=c64)
        self.conv_23 = Bottleneck(c64, c64, 2 * c64, stride=2, residual=False)
        self.conv_3 = ResidualStage(c64, 2 * c64, blocks[0])
        self.conv_34 = Bottleneck(c64, c128, 4 * c64, stride=2, residual=False)
        self.conv_4 = ResidualStage(c128, 2 * c128, blocks[1])
        self.conv_45 = Bottleneck(c128, c128, 4 * c128, stride=2, residual=False)
        self.conv_5 = ResidualStage(c128, 2 * c128, blocks[2])
        self.conv_6_sep = ConvBNPReLU(c128, c_feat, 1)
        spatial = input_size
        for _ in range(4):  # four stride-2 convs with padding 1 (k=3): ceil(size / 2) each
            spatial = math.ceil(spatial / 2)
        self.conv_6_dw = ConvBN(c_feat, c_feat, spatial, groups=c_feat)  # global depthwise conv (GDC)
        self.conv_6_flatten = nn.Flatten()
        self.linear = nn.Linear(c_feat, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv2_dw(self.conv1(x))
        x = self.conv_3(self.conv_23(x))
        x = self.conv_4(self.conv_34(x))
        x = self.conv_5(self.conv_45(x))
        x = self.conv_6_flatten(self.conv_6_dw(self.conv_6_sep(x)))
        return self.bn(self.linear(x))


def mobilefacenet(embedding_size: int = 512, input_size: int = 112) -> MobileFaceNet:
    """The paper's MobileFaceNet (1.20 M parameters, 0.221 GMACs at 112×112 with 512-d output)."""
    return MobileFaceNet(embedding_size=embedding_size, input_size=input_size)


def mobilefacenet_small(embedding_size: int = 128, input_size: int = 64, width: float = 0.5,
                        blocks: tuple[int, int, int] = (1, 2, 1)) -> MobileFaceNet:
    """A narrow, shallow MobileFaceNet for CPU distillation experiments (e.g. against the dlib teacher)."""
    return MobileFaceNet(embedding_size=embedding_size, width=width, input_size=input_size,
                         blocks=blocks)
