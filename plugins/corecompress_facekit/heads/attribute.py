"""A multi-label attribute head on a face embedding (the probe of the attribute evaluator).

L2-normalise → Linear(E → hidden) → BatchNorm1d → ReLU → Dropout → Linear(hidden → A); Xavier-normal
weights, zero biases; returns logits for BCE-with-logits. The defaults (hidden 1024, dropout 0.2, the 40
CelebA attributes) are the sizes of the FACES attribute head (Lajić et al., "FACES: Facial Analysis with
Compressed Efficient Systems", ICT Express 2026), which the ``corecompress_faces_pruner`` plugin builds
from this class; the attribute evaluator fits one on frozen embeddings when no trained head is given.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from corecompress_facekit.celeba import CELEBA_ATTRIBUTES


class AttributeHead(nn.Module):
    """Normalised-embedding MLP with one hidden layer (module docstring); ``net`` holds the layers."""

    def __init__(self, embedding_size: int, num_attributes: int = len(CELEBA_ATTRIBUTES), hidden: int = 1024,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embedding_size, hidden), nn.BatchNorm1d(hidden),
                                 nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_attributes))
        for layer in (self.net[0], self.net[4]):
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(F.normalize(embedding, dim=1))
