"""FACES: LayerNorm-scale importance for face transformers, and its CNN form (network slimming).

Paper: R. Lajić, P. Peer, V. Štruc, D. S. Han, B. Meden, Ž. Emeršič, "FACES: Facial Analysis with
Compressed Efficient Systems", ICT Express, 2026. For every transformer block, |γ| of ``norm1`` scores
the input channels of ``attn.qkv`` and |γ| of ``norm2`` those of ``mlp.fc1``; each block keeps
floor(C·(1 − sparsity)) channels (local, uniform), ties broken by channel index. No data, no gradients.

The same rule where a normalisation scale follows a convolution: |γ| of the BatchNorm (or folded
affine scale) ranks that conv's output channels — network slimming (Liu et al., ICCV 2017).

Deviations from the reference code, on purpose:
- ``sparsity`` is the fraction of channels REMOVED (the reference's argument is the fraction kept).
- Besides masking (the reference), plans can be applied physically: a really smaller, faster model.
- ``scope: global`` (one ranking over all blocks with a per-block floor) and ``branches`` are options
  the paper does not have; the defaults reproduce the paper.

Retraining: the ``faces_attributes`` objective (:mod:`.attributes`, the FACES CelebA head) and the FACES
cosine term ``embedding_cosine`` (:mod:`.embedding_cosine`). Public surface for others: :mod:`.api`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from corecompress import hookimpl
from corecompress.pruning.groups import PrunableGroup


@dataclass
class FacesOptions:
    branches: Literal["both", "attention", "mlp"] = field(
        default="both", metadata={"help": "prune the qkv inputs (attention), the fc1 inputs (mlp) or both"})
    normalize: Literal["none", "block_mean"] = field(
        default="none", metadata={"help": "block_mean divides |γ| by its block's mean (for scope: global)"})


class FacesImportance:
    """|γ| of the norm that feeds (transformers) or follows (CNNs) each unit's channels."""


    def __init__(self, options: FacesOptions) -> None:
        self.options = options
        self.declined: dict[str, str] = {}  # group name -> why FACES has no score for it (read by the runner)

    @property
    def comparable_across_groups(self) -> bool:
        """|γ| / block mean is comparable across blocks (what ``prune.budget`` with scope global needs)."""
        return self.options.normalize == "block_mean"

    def _wanted(self, group: PrunableGroup) -> bool:
        if group.kind != "channels":
            return True
        branch = "attention" if group.name.endswith("attn_in") else "mlp"
        return self.options.branches in ("both", branch)

    def score(self, model: torch.nn.Module, groups: list[PrunableGroup], context: Any) -> dict[str, torch.Tensor]:
        params = dict(model.named_parameters())
        scores = {}
        self.declined = {}
        for g in groups:
            if not self._wanted(g):
                self.declined[g.name] = f"faces: branches is '{self.options.branches}'"
                continue
            if g.scale is None:
                self.declined[g.name] = _why_no_scale(g)
                continue
            gamma = params[g.scale].detach().abs().float().cpu()
            if gamma.numel() != g.size:
                raise ValueError(f"faces: scale {g.scale} has {gamma.numel()} entries for group {g.name} of {g.size}")
            if self.options.normalize == "block_mean":
                gamma = gamma / gamma.mean().clamp_min(1e-12)
            scores[g.name] = gamma
        return scores


def _why_no_scale(group: PrunableGroup) -> str:
    if group.kind == "channels":
        return ("faces: no LayerNorm γ feeds these channels (a post-norm block such as SwinV2's normalises after "
                "the branch); use l1 or nvit for it")
    if group.kind in ("heads", "neurons"):
        return f"faces: {group.kind} have no norm scale (FACES scores channels only)"
    return "faces: no BatchNorm or affine scale follows this convolution"


@hookimpl
def register_losses(register: Any) -> None:
    from corecompress_faces_pruner import embedding_cosine
    from corecompress_faces_pruner.attributes import FacesAttributeObjective, FacesAttributeOptions

    register("faces_attributes", FacesAttributeObjective, FacesAttributeOptions, produces={"attribute_head"},
             description="FACES attribute head (512→1024→BN→ReLU→Dropout→40) with BCE")
    embedding_cosine.register(register)


@hookimpl
def register_importances(register: Any) -> None:
    register("faces", FacesImportance, FacesOptions,
             description="FACES: |LayerNorm γ| (transformers) / |BN or affine γ| (CNNs, network slimming)",
             declines_groups=True)  # groups without a norm γ (heads, MLP neurons) stay unpruned
