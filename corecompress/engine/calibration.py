"""Calibration batches for data- and gradient-driven importances: a fixed, seeded subset."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, default_collate


def calibration_batches(dataset: Dataset, num_batches: int, batch_size: int, seed: int) -> list[dict[str, Any]]:
    """``num_batches`` collated batches drawn without replacement from ``dataset`` (seeded)."""
    gen = torch.Generator().manual_seed(seed + 12_345)
    order = torch.randperm(len(dataset), generator=gen)[: num_batches * batch_size].tolist()
    return [default_collate([dataset[i] for i in order[b:b + batch_size]]) for b in range(0, len(order), batch_size)]


def run_batches(ctx: Any) -> list[dict[str, Any]]:
    """The calibration batches a recipe asks for (``prune.calibration_batches`` × the training batch size)."""
    section = ctx.recipe.retrain or ctx.recipe.train
    batch_size = section.batch_size if section is not None else 32
    return calibration_batches(ctx.data.train(), ctx.recipe.prune.calibration_batches, batch_size, ctx.recipe.seed)
