"""Section (c): a masked pruned SwinFace equals its physical removal on the device, in fp32 and bf16."""
from __future__ import annotations

import copy

import torch
from torch import nn

from corecompress.pruning.masking import apply_masks
from corecompress.pruning.physical import apply_physical
from gpucheck.context import CheckEnv
from gpucheck.precision import autocast, exact_fp32
from gpucheck.report import Row
from gpucheck.swin_variants import swin_variants

VARIANT = "hnc_50pct_r8"  # heads, neurons and channels, rounded: every kind of group and the rounding
TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2}  # max |masked − physical| / max |physical|


def relative_error(model_a: nn.Module, model_b: nn.Module, images: torch.Tensor, precision: str) -> float:
    """max |a(x) − b(x)| / max |b(x)|, both models in eval mode under ``precision``."""
    with torch.no_grad(), autocast(images.device, precision):
        a, b = model_a(images).float(), model_b(images).float()
    return float((a - b).abs().max() / b.abs().max())


def run(env: CheckEnv) -> tuple[list[Row], list[str]]:
    variants = swin_variants(env.registry, env.shapes.swin_preset, env.shapes.bisect_iterations)
    groups, plan = variants.plans[VARIANT]
    masked = copy.deepcopy(variants.dense)
    apply_masks(masked, groups, plan)
    physical = apply_physical(copy.deepcopy(variants.dense), groups, plan)
    masked, physical = masked.to(env.device).eval(), physical.to(env.device).eval()
    gen = torch.Generator().manual_seed(2)
    images = torch.randn((env.shapes.equivalence_batch, *variants.spec.input_size), generator=gen).to(env.device)
    rows = []
    for precision, limit in TOLERANCE.items():
        if precision == "fp32":
            with exact_fp32():
                error = relative_error(masked, physical, images, precision)
        else:
            error = relative_error(masked, physical, images, precision)
        rows.append(Row(VARIANT, f"masked vs physical, {precision}", error, "max rel. error",
                        limit=f"<= {limit:g}", passed=error <= limit))
    notes = [f"{VARIANT} (sparsity {variants.sparsity[VARIANT]:.3f}) on {env.device}, batch "
             f"{env.shapes.equivalence_batch}; fp32 without TF32; error = max |masked - physical| / max |physical|"]
    return rows, notes
