"""A FACES-pruned pre-norm branch in one module: LayerNorm statistics over all C, only kept channels out.

FACES (Lajić et al., ICT Express 2026) removes input channels of ``qkv`` / ``fc1`` while the
LayerNorm before them still normalises over all C. Physically that is LayerNorm(C) → gather(k) →
Linear(k) (:class:`~corecompress.pruning.physical.GatheredLinear`): all C channels are normalised and
written, then most are thrown away. :class:`NormGatheredLinear` computes each token's mean and
variance over all C (two reductions, nothing of size C written), gathers the k kept channels of the
raw input, normalises and scales only those, and applies the linear — the same function
(LayerNorm is per token, so it commutes with Swin's window partition, shifts and zero padding).

The variance is E[x²] − E[x]² in float32 (one pass); that is exact to float32 rounding while a
token's mean is not much larger than its spread (what LayerNorm inputs in pre-norm blocks are),
and masked ≡ physical is tested at rel. err ≤ 1e-5.

Where it pays (``benchmarks/fused_norm_gather.py``; 2-core CPU shared with other jobs, batch 32, 1
thread): the branch alone (LayerNorm → gather → Linear) was 3–16 % faster fused at C ≤ 128 with at most
half the channels kept, and 6–21 % slower at C = 96 with 50 % kept on Swin-T's 25 k tokens or C = 768;
whole SwinFace-nano models FACES-pruned at 25 / 50 / 75 % ran at 0.89 / 1.00 / 0.95 × the gathered form.
It never paid in a whole model, so physical removal keeps LayerNorm + gather by default and the fused
module is opt-in (``apply_physical(..., fuse_norms=True)``), to be measured again on a quiet machine.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

class NormGatheredLinear(nn.Module):
    """``Linear(LayerNorm(x)[..., index])`` over the last dimension, normalising only the kept channels."""

    def __init__(self, norm: nn.LayerNorm, linear: nn.Linear, index: torch.Tensor) -> None:
        super().__init__()
        if norm.weight is None or len(norm.normalized_shape) != 1:
            raise TypeError("NormGatheredLinear needs a LayerNorm over the last dimension with a scale")
        self.in_total = int(norm.normalized_shape[0])
        self.eps = float(norm.eps)
        index = index.to(device=norm.weight.device, dtype=torch.long)
        self.register_buffer("input_index", index.clone())
        self.norm_weight = nn.Parameter(norm.weight.detach()[index].clone(), requires_grad=norm.weight.requires_grad)
        bias = norm.bias if norm.bias is not None else torch.zeros_like(norm.weight)
        self.norm_bias = nn.Parameter(bias.detach()[index].clone(), requires_grad=norm.weight.requires_grad)
        self.weight, self.bias = linear.weight, linear.bias
        self.in_features, self.out_features = len(index), linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        square = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square() / self.in_total
        rstd = torch.rsqrt((square - mean * mean).clamp_min(0.0) + self.eps)
        kept = (x.index_select(-1, self.input_index) - mean) * rstd
        return F.linear(torch.addcmul(self.norm_bias, kept, self.norm_weight), self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"LayerNorm over {self.in_total}, then {self.in_features} kept channels -> {self.out_features}, "
                f"eps={self.eps}")
