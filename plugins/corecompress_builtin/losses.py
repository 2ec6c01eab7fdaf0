"""``cross_entropy``: plain softmax cross-entropy on the model's outputs (no distillation)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from corecompress.engine.precision import float32_math


@dataclass
class CrossEntropyOptions:
    label_smoothing: float = 0.0


class CrossEntropy(torch.nn.Module):
    def __init__(self, options: CrossEntropyOptions) -> None:
        super().__init__()
        self.options = options

    def setup(self, context: Any) -> None:
        """Nothing to prepare: the model's outputs are the logits."""

    @float32_math
    def forward(self, outputs: torch.Tensor, batch: dict[str, Any], teacher_outputs: Any = None) -> dict[str, Any]:
        top = int(batch["label"].max())
        if top >= outputs.shape[1]:
            from corecompress.errors import UserError
            raise UserError(f"objective: cross_entropy got label {top} but the model has only {outputs.shape[1]} "
                            "outputs; set the model's num_outputs to the number of classes")
        loss = F.cross_entropy(outputs, batch["label"], label_smoothing=self.options.label_smoothing)
        return {"loss": loss, "ce": loss.detach()}


def register(register: Any) -> None:
    register("cross_entropy", CrossEntropy, CrossEntropyOptions, description="softmax cross-entropy")
