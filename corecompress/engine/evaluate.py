"""Run the recipe's evaluators on a model (before pruning, during training, after).

The model's forward runs in the run's precision (:func:`corecompress.engine.precision.autocast_forward`:
autocast for bf16/fp16, outputs handed to the evaluator as float32).
"""
from __future__ import annotations

from typing import Any

import torch

from corecompress.engine.precision import autocast_forward


def evaluate_model(ctx: Any, model: torch.nn.Module) -> dict[str, Any]:
    """Metrics of every evaluator in ``recipe.evaluate``, keyed ``<evaluator>/<metric>``."""
    results: dict[str, Any] = {}
    was_training = model.training
    model.eval()
    try:
        for chosen in ctx.recipe.evaluate:
            evaluator = ctx.create("evaluator", chosen)
            with torch.no_grad(), autocast_forward(model, getattr(ctx, "precision", "fp32"), ctx.device):
                metrics = evaluator.evaluate(model, ctx.data, ctx)
            for key, value in metrics.items():
                results[f"{chosen.name}/{key}"] = value
    finally:
        model.train(was_training)
    return results
