"""The fused LayerNorm-then-gather (NormGatheredLinear): the same function as LayerNorm(C) → gather →
Linear, so masked ≡ physical holds with it, it trains, and it exports to ONNX."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from corecompress.plugin.loading import load_plugins
from corecompress.pruning.fused_norm import NormGatheredLinear
from corecompress.pruning.masking import apply_masks
from corecompress.pruning.physical import GatheredLinear, apply_physical
from corecompress.pruning.plan import make_plan
from corecompress.testing.stand_ins import stand_in_model

REGISTRY = load_plugins().registry


def test_the_fused_module_is_layernorm_then_gather_then_linear():
    torch.manual_seed(0)
    norm, linear = nn.LayerNorm(48), nn.Linear(48, 20)
    nn.init.normal_(norm.weight), nn.init.normal_(norm.bias)
    index = torch.tensor([0, 3, 4, 10, 17, 30, 47])
    x = torch.randn(5, 9, 48) * 2.0 + 1.5          # tokens whose mean is not zero
    expected = F.linear(norm(x)[..., index], linear.weight[:, index], linear.bias)
    gathered = GatheredLinear(48, index, 20)
    gathered.weight, gathered.bias = nn.Parameter(linear.weight[:, index].detach()), linear.bias
    with torch.no_grad():
        got = NormGatheredLinear(norm, gathered, index)(x)
        expected = expected.detach()
    assert float((got - expected).abs().max() / expected.abs().max()) <= 1e-5


@pytest.mark.parametrize("model_name,options", [("tiny_vit", {}), ("swinface", {"preset": "nano"})])
def test_masked_equals_physical_with_fused_norms(model_name, options):
    torch.manual_seed(0)
    model, spec = stand_in_model(model_name, REGISTRY, **options)
    for p in model.parameters():  # away from the initial LayerNorm scales of 1
        p.data.add_(torch.randn_like(p) * 0.05)
    groups = spec.prunable_groups(model, ("channels", "heads", "neurons"))
    gen = torch.Generator().manual_seed(1)
    plan = make_plan({g.name: torch.rand(g.size, generator=gen) for g in groups}, groups, 0.6)
    masked, fused = copy.deepcopy(model).eval(), apply_physical(copy.deepcopy(model), groups, plan, fuse_norms=True).eval()
    apply_masks(masked, groups, plan)
    assert any(isinstance(m, NormGatheredLinear) for m in fused.modules())
    x = torch.randn(3, *spec.input_size)
    with torch.no_grad():
        a, b = masked(x), fused(x)
    assert float((a - b).abs().max() / a.abs().max()) <= 1e-5
    fused.train()
    fused(x).sum().backward()
    assert all(m.norm_weight.grad is not None for m in fused.modules() if isinstance(m, NormGatheredLinear))


def test_a_fused_model_exports_to_onnx(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from corecompress.tools.onnx_export import export_onnx, onnx_relative_error

    model, spec = stand_in_model("swinface", REGISTRY, preset="nano")
    groups = spec.prunable_groups(model, ("channels",))
    plan = make_plan({g.name: torch.arange(g.size, dtype=torch.float) for g in groups}, groups, 0.75)
    fused = apply_physical(model, groups, plan, fuse_norms=True).eval()
    path = export_onnx(fused, spec.input_size, tmp_path / "fused.onnx")
    assert onnx_relative_error(fused, path, tuple(spec.input_size)) <= 1e-4
