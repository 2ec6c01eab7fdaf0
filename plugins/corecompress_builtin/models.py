"""Model adapters for the tiny models of :mod:`corecompress_builtin.tiny_models` (the smoke recipe, tests)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from corecompress.pruning.groups import PrunableGroup
from corecompress_builtin.tiny_models import TinyCNN, TinyViT


@dataclass
class TinyViTOptions:
    img_size: int = 16
    patch: int = 4
    dim: int = 32
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: int = 2
    num_outputs: int = 10

    def __post_init__(self) -> None:
        for name in ("img_size", "patch", "dim", "depth", "num_heads", "mlp_ratio", "num_outputs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")
        if self.img_size % self.patch:
            raise ValueError("img_size: must be a multiple of patch")
        if self.dim % self.num_heads:
            raise ValueError("dim: must be a multiple of num_heads")


@dataclass
class TinyCNNOptions:
    img_size: int = 16
    channels: int = 16
    inner: int = 16
    depth: int = 2
    num_outputs: int = 10

    def __post_init__(self) -> None:
        for name in ("img_size", "channels", "inner", "depth", "num_outputs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")


class TinyViTAdapter:
    """A 2-block ViT as a prunable model: channels, heads, neurons."""

    def __init__(self, options: TinyViTOptions) -> None:
        self.options = options
        self.input_size = (3, options.img_size, options.img_size)
        self.embedding_size = options.num_outputs

    def build(self) -> torch.nn.Module:
        o = self.options
        return TinyViT(o.img_size, o.patch, o.dim, o.depth, o.num_heads, o.mlp_ratio, o.num_outputs)

    def prunable_groups(self, model: torch.nn.Module, targets: tuple[str, ...]) -> list[PrunableGroup]:
        return model.prunable_groups(targets)


class TinyCNNAdapter:
    """A residual CNN as a prunable model: inner filters of each block."""

    def __init__(self, options: TinyCNNOptions) -> None:
        self.options = options
        self.input_size = (3, options.img_size, options.img_size)
        self.embedding_size = options.num_outputs

    def build(self) -> torch.nn.Module:
        o = self.options
        return TinyCNN(o.channels, o.inner, o.depth, o.num_outputs)

    def prunable_groups(self, model: torch.nn.Module, targets: tuple[str, ...]) -> list[PrunableGroup]:
        return model.prunable_groups(targets)


def register(register: Any) -> None:
    register("tiny_vit", TinyViTAdapter, TinyViTOptions, description="2-block ViT for tests and the smoke recipe")
    register("tiny_cnn", TinyCNNAdapter, TinyCNNOptions, description="small residual CNN for tests")
