"""corecompress_prune_baselines: pruning criteria to compare FACES (Lajić et al., ICT Express 2026) with,
registered through the entry-point group like any plugin.

- ``taylor``: first-order Taylor importance (Molchanov et al., CVPR 2019).
- ``nvit``: Hessian-aware saliency normalised by cost, for global pruning (NViT, CVPR 2023; SAViT, NeurIPS 2022).
- ``vit_slim``: L1-budgeted soft-mask search (ViT-Slim, CVPR 2022).
- ``tp_magnitude``: Torch-Pruning's group magnitude (optional library) as an external reference;
  :func:`corecompress_prune_baselines.torch_pruning_reference.torch_pruning_prune` prunes with the library itself.

The gradient-based ones differentiate the loss described in :mod:`corecompress_prune_baselines.objective`.
"""
from __future__ import annotations

from typing import Any

from corecompress import hookimpl


@hookimpl
def register_importances(register: Any) -> None:
    from corecompress_prune_baselines import nvit, taylor, torch_pruning_reference, vit_slim

    register("taylor", taylor.TaylorImportance, taylor.TaylorOptions,
             description="first-order Taylor |Σ w·∂L/∂w| per unit (Molchanov et al., CVPR 2019)",
             needs=("data", "grad"))
    register("nvit", nvit.NViTImportance, nvit.NViTOptions,
             description="Hessian-aware saliency / unit cost, for prune.scope: global (NViT, CVPR 2023; SAViT)",
             needs=("data", "grad"))
    register("vit_slim", vit_slim.ViTSlimImportance, vit_slim.ViTSlimOptions,
             description="|soft mask| after an L1-budgeted mask search (ViT-Slim, CVPR 2022)",
             needs=("data", "grad"))
    register("tp_magnitude", torch_pruning_reference.TPMagnitudeImportance, torch_pruning_reference.TPMagnitudeOptions,
             description="Torch-Pruning's GroupMagnitudeImportance on neuron/filter groups (needs torch-pruning)",
             declines_groups=True)  # only neuron/filter groups
