"""Tiny stand-in models (seconds on CPU) with the structure real models have: the ``tiny_vit`` and
``tiny_cnn`` model components (:mod:`corecompress_builtin.models`), and what the test kit builds through them.

- :class:`TinyViT`: a 2-block pre-norm ViT whose attention reads sizes from tensors and
  ``num_heads`` (so channel, head and neuron pruning all apply), like timm's blocks.
- :class:`TinyCNN`: residual conv blocks with BatchNorm (network-slimming style filter pruning).
"""
from __future__ import annotations

import torch
from torch import nn

from corecompress.pruning.groups import PrunableGroup, Slice
from corecompress.pruning.transformer import block_groups


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attn = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
        out = attn.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding → ``depth`` pre-norm blocks → LayerNorm → mean pool → linear head."""

    def __init__(self, img_size: int = 16, patch: int = 4, dim: int = 32, depth: int = 2, num_heads: int = 4,
                 mlp_ratio: int = 2, num_outputs: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.dim, self.num_heads, self.mlp_ratio = dim, num_heads, mlp_ratio
        self.patch_embed = nn.Conv2d(in_chans, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, (img_size // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(1))

    def prunable_groups(self, targets: tuple[str, ...] | set[str] = ("channels", "heads", "neurons")) -> list[PrunableGroup]:
        groups: list[PrunableGroup] = []
        for i, block in enumerate(self.blocks):
            groups += block_groups(f"blocks.{i}", dim=self.dim, num_heads=block.attn.num_heads,
                                   head_dim=block.attn.head_dim, hidden=block.mlp.fc1.out_features,
                                   targets=tuple(targets))
        return groups


class ResBlock(nn.Module):
    def __init__(self, channels: int, inner: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, inner, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class TinyCNN(nn.Module):
    """Stem conv → residual blocks (prunable inner filters) → pool → linear head."""

    def __init__(self, channels: int = 16, inner: int = 16, depth: int = 2, num_outputs: int = 10,
                 in_chans: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU())
        self.blocks = nn.Sequential(*[ResBlock(channels, inner) for _ in range(depth)])
        self.head = nn.Linear(channels, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))

    def prunable_groups(self, targets: tuple[str, ...] | set[str] = ("filters",)) -> list[PrunableGroup]:
        """Inner filters of each residual block (conv1 outputs = conv2 inputs); block outputs are tied."""
        if "filters" not in targets:
            return []
        groups = []
        for i, block in enumerate(self.blocks):
            p = f"blocks.{i}"
            slices = (Slice(f"{p}.conv1.weight", 0),) + tuple(
                Slice(f"{p}.bn1.{t}", 0) for t in ("weight", "bias", "running_mean", "running_var")
            ) + (Slice(f"{p}.conv2.weight", 1),)
            groups.append(PrunableGroup(name=f"{p}.inner", kind="filters", size=block.conv1.out_channels,
                                        block=p, scale=f"{p}.bn1.weight", slices=slices))
        return groups
