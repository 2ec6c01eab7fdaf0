"""FACES attribute-recognition objective (Lajić et al., ICT Express 2026, as its reference code retrains).

Backbone → L2-normalised embedding → FACES head Linear(E→1024) → BatchNorm1d → ReLU → Dropout(0.2) →
Linear(1024→40) (Xavier-normal, zero bias), BCE-with-logits on the 40 CelebA attributes (labels 0/1).
The head is trainable together with the (pruned) backbone. :class:`FacesAttributeHead` is facekit's
generic attribute head with these sizes, so facekit's attribute evaluator probes with the same architecture.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from corecompress.errors import UserError
from corecompress_facekit.api import CELEBA_ATTRIBUTES, AttributeHead


class FacesAttributeHead(AttributeHead):
    """FACES CelebA head (Lajić et al., ICT Express 2026): L2-normalise -> Linear(E->1024) -> BatchNorm1d -> ReLU ->
    Dropout(0.2) -> Linear(1024->40); Xavier-normal weights, zero biases. Returns logits for BCE.

    facekit's generic :class:`~corecompress_facekit.api.AttributeHead` with the FACES sizes as defaults.
    """

    def __init__(self, embedding_size: int = 512, num_attributes: int = len(CELEBA_ATTRIBUTES),
                 hidden: int = 1024, dropout: float = 0.2) -> None:
        super().__init__(embedding_size, num_attributes, hidden=hidden, dropout=dropout)


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
