"""Synthetic batches for tests: dict batches like the datasets produce."""
from __future__ import annotations

from typing import Any

import torch


def synthetic_batches(num_batches: int, batch_size: int, input_size: tuple[int, ...], num_classes: int,
                      seed: int = 0) -> list[dict[str, Any]]:
    """Seeded random images with labels, 40 binary attributes, dataset indices and no flips."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b in range(num_batches):
        out.append({"image": torch.randn(batch_size, *input_size, generator=gen),
                    "label": torch.randint(0, num_classes, (batch_size,), generator=gen),
                    "index": torch.arange(b * batch_size, (b + 1) * batch_size),
                    "attributes": torch.randint(0, 2, (batch_size, 40), generator=gen).float(),
                    "flipped": torch.zeros(batch_size, dtype=torch.bool)})
    return out
