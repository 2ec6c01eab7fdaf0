"""Margin-penalty softmax heads (ArcFace, CosFace and their combination) for face-recognition training.

The margin softmax of ArcFace/CosFace training (and of AdaDistill's logits, Boutros et al., ECCV 2024).
Combined margin in the insightface convention
(Deng et al., "ArcFace", CVPR 2019, Sec. 2.3): the target logit is s·(cos(m1·θ + m2) − m3), every
other logit s·cos θ, where θ is the angle between the L2-normalised embedding and class centre.
ArcFace = (1, m, 0), CosFace (Wang et al. 2018) = (1, 0, m), SphereFace-like = (m1 > 1, 0, 0).

Numerics (documented rule, see :func:`target_margin`):
- the margin is computed in float32 or wider, also under autocast (fp16 cannot represent 1 − eps);
- cos is clamped to [−1 + eps, 1 − eps] before ``acos``, so the gradient is finite even at cos = ±1;
- where m1·θ + m2 would pass π (θ > θ* = (π − m2)/m1), cos(m1·θ + m2) would rise again and reward
  a worse angle. There we continue with the shifted cosine ``cos θ − (1 + m3 + cos θ*)``: equal to
  −1 − m3 at θ*, so the target logit is continuous, strictly decreasing in θ on the whole [0, π], and
  still ≤ s·cos θ (a non-negative margin). insightface instead subtracts m·sin m (a jump at θ*).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from corecompress.engine.precision import autocast_off

DEFAULT_EPS = 1e-7


def _check_margins(m1: float, m2: float) -> None:
    if not m1 > 0:
        raise ValueError(f"margin m1 must be > 0, got {m1}")
    if m2 < 0:
        raise ValueError(f"additive angular margin m2 must be ≥ 0, got {m2}")


def target_margin(cos: Tensor, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0,
                  eps: float = DEFAULT_EPS) -> Tensor:
    """cos(m1·θ + m2) − m3 with the continuous, monotone fallback beyond θ* (module docstring).

    Unscaled (no ``s``); computed in float32 or wider. Pure CosFace (m1 = 1, m2 = 0) is exactly
    ``cos − m3`` without any ``acos``.
    """
    _check_margins(m1, m2)
    cos = cos.float() if cos.dtype not in (torch.float32, torch.float64) else cos
    if m1 == 1.0 and m2 == 0.0:
        return cos - m3
    theta = torch.acos(cos.clamp(-1.0 + eps, 1.0 - eps))
    with_margin = torch.cos(m1 * theta + m2) - m3
    theta_limit = (math.pi - m2) / m1
    if theta_limit >= math.pi:
        return with_margin
    fallback = cos - (1.0 + m3 + math.cos(theta_limit))
    return torch.where(theta <= theta_limit, with_margin, fallback)


def margin_logits(cos: Tensor, labels: Tensor, s: float = 64.0, m1: float = 1.0, m2: float = 0.5,
                  m3: float = 0.0, eps: float = DEFAULT_EPS) -> Tensor:
    """Logits of the combined margin softmax from cosines ``cos`` (B, K) and ``labels`` (B,).

    Target entries get s·(cos(m1·θ + m2) − m3) (with the fallback of :func:`target_margin`), all
    others s·cos θ. A negative label (insightface's "class not in this shard") leaves the row
    without margin. Returns float32 (or float64 if ``cos`` is float64). Reused by AdaDistill.
    """
    if cos.ndim != 2 or labels.ndim != 1 or labels.shape[0] != cos.shape[0]:
        raise ValueError(f"expected cos (B, K) and labels (B,), got {tuple(cos.shape)} and "
                         f"{tuple(labels.shape)}")
    _check_margins(m1, m2)
    cos = cos.float() if cos.dtype not in (torch.float32, torch.float64) else cos
    labels = labels.long()
    if bool((labels >= cos.shape[1]).any()):
        raise ValueError(f"label {int(labels.max())} out of range for {cos.shape[1]} classes")
    rows = torch.nonzero(labels >= 0, as_tuple=True)[0]
    cols = labels[rows]
    target = target_margin(cos[rows, cols], m1, m2, m3, eps)
    logits = cos.clone()
    logits[rows, cols] = target
    return logits * s


def _initial_weight(init_weight: Tensor, num_classes: int, embedding_size: int, layout: str) -> Tensor:
    shape = tuple(init_weight.shape)
    if layout == "auto":
        if shape == (num_classes, embedding_size):
            layout = "KE"
        elif shape == (embedding_size, num_classes):
            layout = "EK"
    if layout == "KE" and shape == (num_classes, embedding_size):
        return init_weight.detach().clone().float()
    if layout == "EK" and shape == (embedding_size, num_classes):
        return init_weight.detach().t().clone().float()
    raise ValueError(f"init_weight has shape {list(shape)}, expected [{num_classes}, {embedding_size}] "
                     f"(classes × embedding) or its transpose (layout {layout!r})")


class CombinedMarginHead(nn.Module):
    """Trainable class centres ``weight`` (K × E) with the combined margin s·(cos(m1·θ + m2) − m3).

    ``init_weight`` initialises the centres from a given tensor — e.g. a pretrained header, as the
    FACES reference retraining does — in K×E (nn.Linear) or E×K (ArcFace-kernel) layout
    (``init_weight_layout`` "auto" decides by shape; square ones are taken as K×E). Otherwise the
    centres start N(0, 0.01²) (insightface). ``forward(embeddings, labels)`` returns the logits for
    cross-entropy; without labels it returns s·cos θ (no margin, for inference/evaluation).
    """

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m1: float = 1.0,
                 m2: float = 0.5, m3: float = 0.0, init_weight: Tensor | None = None,
                 init_weight_layout: str = "auto", eps: float = DEFAULT_EPS) -> None:
        super().__init__()
        _check_margins(m1, m2)
        if init_weight_layout not in ("auto", "KE", "EK"):
            raise ValueError(f"init_weight_layout must be 'auto', 'KE' or 'EK', got {init_weight_layout!r}")
        self.embedding_size, self.num_classes = embedding_size, num_classes
        self.s, self.m1, self.m2, self.m3, self.eps = s, m1, m2, m3, eps
        if init_weight is None:
            weight = torch.randn(num_classes, embedding_size) * 0.01
        else:
            weight = _initial_weight(init_weight, num_classes, embedding_size, init_weight_layout)
        self.weight = nn.Parameter(weight)

    def cosine(self, embeddings: Tensor) -> Tensor:
        """cos θ between normalised embeddings (B, E) and normalised centres: (B, K), float32."""
        with autocast_off():
            return F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(self.weight.float(), dim=1))

    def forward(self, embeddings: Tensor, labels: Tensor | None = None) -> Tensor:
        cos = self.cosine(embeddings)
        if labels is None:
            return cos * self.s
        return margin_logits(cos, labels, self.s, self.m1, self.m2, self.m3, self.eps)

    def extra_repr(self) -> str:
        return (f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, s={self.s}, "
                f"m1={self.m1}, m2={self.m2}, m3={self.m3}")


class ArcFaceHead(CombinedMarginHead):
    """ArcFace: s·cos(θ + m) for the target; m = 0.5 (insightface default; AdaDistill's best is 0.45)."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5,
                 init_weight: Tensor | None = None, init_weight_layout: str = "auto") -> None:
        super().__init__(embedding_size, num_classes, s=s, m1=1.0, m2=m, m3=0.0,
                         init_weight=init_weight, init_weight_layout=init_weight_layout)


class CosFaceHead(CombinedMarginHead):
    """CosFace: s·(cos θ − m) for the target.

    Default m = 0.35 (CosFace paper and AdaDistill); insightface's arcface_torch configs use 0.4.
    """

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.35,
                 init_weight: Tensor | None = None, init_weight_layout: str = "auto") -> None:
        super().__init__(embedding_size, num_classes, s=s, m1=1.0, m2=0.0, m3=m,
                         init_weight=init_weight, init_weight_layout=init_weight_layout)
