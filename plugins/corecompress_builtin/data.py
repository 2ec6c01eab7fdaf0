"""``synthetic_prototypes``: a seeded classification set for smoke tests (no files, no downloads).

Each class is a smooth random image; samples are the class image plus noise and a random shift.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset


@dataclass
class PrototypeOptions:
    num_classes: int = 10
    train_per_class: int = 32
    test_per_class: int = 8
    img_size: int = 16
    noise: float = 0.6
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError("num_classes: must be at least 2")
        for name in ("train_per_class", "test_per_class", "img_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")
        if not self.noise >= 0:
            raise ValueError("noise: must be non-negative")


class PrototypeSet(Dataset):
    def __init__(self, prototypes: torch.Tensor, per_class: int, noise: float, seed: int) -> None:
        self.prototypes, self.per_class, self.noise, self.seed = prototypes, per_class, noise, seed

    def __len__(self) -> int:
        return self.prototypes.shape[0] * self.per_class

    def __getitem__(self, index: int) -> dict[str, Any]:
        label = index // self.per_class
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        shift = torch.randint(-2, 3, (2,), generator=gen).tolist()
        image = torch.roll(self.prototypes[label], shifts=shift, dims=(1, 2))
        image = image + self.noise * torch.randn(image.shape, generator=gen)
        return {"image": image, "label": label, "index": index}


class SyntheticPrototypes:
    def __init__(self, options: PrototypeOptions) -> None:
        o = self.options = options
        gen = torch.Generator().manual_seed(o.seed)
        coarse = torch.randn(o.num_classes, 3, 4, 4, generator=gen)
        self.prototypes = torch.nn.functional.interpolate(coarse, size=(o.img_size, o.img_size), mode="bilinear",
                                                          align_corners=False)
        self.num_classes = o.num_classes

    def train(self) -> Dataset:
        return PrototypeSet(self.prototypes, self.options.train_per_class, self.options.noise, self.options.seed + 1)

    def evaluation(self) -> dict[str, Dataset]:
        return {"test": PrototypeSet(self.prototypes, self.options.test_per_class, self.options.noise,
                                     self.options.seed + 2)}


def register(register: Any) -> None:
    register("synthetic_prototypes", SyntheticPrototypes, PrototypeOptions,
             description="seeded noisy class prototypes (smoke tests)")
