"""Heads of the corecompress_facekit plugin: margin-penalty softmax (ArcFace, CosFace, combined), attributes."""
from __future__ import annotations

from .attribute import AttributeHead
from .margin import ArcFaceHead, CombinedMarginHead, CosFaceHead, margin_logits, target_margin

__all__ = ["ArcFaceHead", "AttributeHead", "CombinedMarginHead", "CosFaceHead", "margin_logits", "target_margin"]
