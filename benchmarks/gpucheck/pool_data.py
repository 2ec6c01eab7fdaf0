"""``gpu_check_pool``: a dataset of a few random images cycled over many labels, held in memory.

The distillation step (section b) measures the training loop, not image decoding: each sample is a
view of one of ``images`` fixed random images with a random label out of ``num_classes``, so the
framework and the hand-written loop read identical, cheap batches of the real shapes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from corecompress.plugin.registry import Component

NAME = "gpu_check_pool"


@dataclass
class PoolOptions:
    num_classes: int = 10
    image_size: int = 32
    images: int = 8
    length: int = 64
    seed: int = 0


class ImagePool(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index % len(self.images)], "label": int(self.labels[index]), "index": index}


class PoolData:
    def __init__(self, options: PoolOptions) -> None:
        gen = torch.Generator().manual_seed(options.seed)
        size = options.image_size
        self.num_classes = options.num_classes
        self._train = ImagePool(torch.randn(options.images, 3, size, size, generator=gen),
                                torch.randint(0, options.num_classes, (options.length,), generator=gen))

    def train(self) -> Dataset:
        return self._train

    def evaluation(self) -> dict[str, Dataset]:
        return {}


def register_pool(registry: Any) -> None:
    """Add the dataset to ``registry`` (once)."""
    if NAME not in registry.names("dataset"):
        registry.add(Component(kind="dataset", name=NAME, factory=PoolData, options=PoolOptions,
                               plugin="gpu_check", description="random images cycled over many labels"))
