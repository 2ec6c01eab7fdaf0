"""FACES attribute-recognition objective (Lajić et al., ICT Express 2026; faces.md "Retraining").

Backbone → L2-normalised embedding → FACES head Linear(E→1024) → BatchNorm1d → ReLU → Dropout(0.2) →
Linear(1024→40) (Xavier-normal, zero bias), BCE-with-logits on the 40 CelebA attributes (labels 0/1).
The head is trainable together with the (pruned) backbone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from corecompress.errors import UserError


@dataclass
class FacesAttributeOptions:
    hidden: int = field(default=1024, metadata={"help": "width of the head's hidden layer (FACES: 1024)"})
    dropout: float = field(default=0.2, metadata={"help": "dropout before the output layer (FACES: 0.2)"})


class FacesAttributeObjective(nn.Module):
    """BCE over the 40 attributes through the FACES head; logs the batch's mean attribute accuracy."""

    def __init__(self, options: FacesAttributeOptions) -> None:
        super().__init__()
        self.options = options
        self.head: nn.Module | None = None

    def setup(self, ctx: Any) -> None:
        from corecompress_facekit.models.swinface_heads import FacesAttributeHead

        size = getattr(ctx.model_spec, "embedding_size", None)
        if size is None:
            raise UserError("retrain.objective: faces_attributes needs a model with an embedding_size")
        self.head = FacesAttributeHead(int(size), hidden=self.options.hidden, dropout=self.options.dropout)
        self.head.to(getattr(ctx, "device", torch.device("cpu")))

    def artifacts(self) -> dict[str, nn.Module]:
        """``attribute_head``: the FACES head trained with the model (for the attribute evaluator)."""
        return {"attribute_head": self.head} if self.head is not None else {}

    def forward(self, outputs: torch.Tensor, batch: dict[str, Any], teacher_outputs: Any = None) -> dict[str, Any]:
        if "attributes" not in batch:
            raise UserError("retrain.objective: faces_attributes needs a dataset with attribute labels (e.g. celeba, synthetic_faces)")
        logits = self.head(outputs)
        target = batch["attributes"].to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        accuracy = ((logits > 0) == (target > 0.5)).float().mean()
        return {"loss": loss, "bce": loss.detach(), "attribute_accuracy": accuracy}
