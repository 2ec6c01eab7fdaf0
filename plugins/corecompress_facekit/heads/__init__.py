"""Training heads of the corecompress_facekit plugin: margin-penalty softmax (ArcFace, CosFace, combined)."""
from __future__ import annotations

from .margin import ArcFaceHead, CombinedMarginHead, CosFaceHead, margin_logits, target_margin

__all__ = ["ArcFaceHead", "CombinedMarginHead", "CosFaceHead", "margin_logits", "target_margin"]
