"""FACES importance (Lajić et al. 2026): |LayerNorm γ| per block, plans, masked ≡ physical on SwinFace."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from corecompress.tools import measure
from corecompress.plugin.loading import load_plugins
from corecompress.pruning import make_plan
from corecompress.pruning.masking import apply_masks
from corecompress.pruning.physical import apply_physical

REGISTRY = load_plugins().registry


def faces(**options):
    comp = REGISTRY.get("importance", "faces")
    return comp.create(comp.parse(options, "prune.importance"))


def swinface(preset):
    comp = REGISTRY.get("model", "swinface")
    spec = comp.create(comp.parse({"preset": preset}, "model"))
    return spec, spec.build().eval()


def randomise_norms(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))


def test_faces_scores_are_abs_gamma_and_plan_keeps_top_k_per_block():
    spec, model = swinface("micro")
    randomise_norms(model)
    groups = spec.prunable_groups(model, ("channels",))
    block = model.trunk.layers[0].blocks[1]
    with torch.no_grad():
        block.norm1.weight.copy_(torch.tensor([0.5, -3.0, 0.1, 2.0, -0.2, 1.0, 0.0, -0.7, 0.3, 0.9, -1.5, 0.05, 0.6, -0.4, 0.8, 0.2]))
    scores = faces().score(model, groups, None)
    name = "trunk.layers.0.blocks.1.attn_in"
    assert torch.equal(scores[name], block.norm1.weight.detach().abs())
    plan = make_plan(scores, groups, 0.5)
    # top-8 |γ|: 3.0, 2.0, 1.5, 1.0, 0.9, 0.8, 0.7, 0.6 at channels 1, 3, 10, 5, 9, 14, 7, 12
    assert plan.groups[name].keep == [1, 3, 5, 7, 9, 10, 12, 14]
    for g in groups:  # local and uniform: every block keeps floor(C·0.5)
        assert len(plan.groups[g.name].keep) == g.size // 2


def test_faces_ties_are_broken_by_channel_index():
    spec, model = swinface("micro")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.fill_(1.0)
    groups = spec.prunable_groups(model, ("channels",))
    plan = make_plan(faces().score(model, groups, None), groups, 0.3)
    for g in groups:
        k = len(plan.groups[g.name].keep)
        assert plan.groups[g.name].keep == list(range(k))


def test_faces_branches_option_selects_groups():
    spec, model = swinface("micro")
    groups = spec.prunable_groups(model, ("channels",))
    attention_only = faces(branches="attention").score(model, groups, None)
    assert attention_only and all(n.endswith("attn_in") for n in attention_only)
    mlp_only = faces(branches="mlp").score(model, groups, None)
    assert mlp_only and all(n.endswith("mlp_in") for n in mlp_only)


@pytest.mark.parametrize("preset", ["nano", "swin_t"])
def test_masked_equals_physical_on_swinface(preset):
    spec, model = swinface(preset)
    randomise_norms(model, seed=3)
    groups = spec.prunable_groups(model, ("channels",))
    plan = make_plan(faces().score(model, groups, None), groups, 0.5)
    masked, physical = copy.deepcopy(model), copy.deepcopy(model)
    apply_masks(masked, groups, plan)
    apply_physical(physical, groups, plan)
    x = torch.randn(2, *spec.input_size)
    with torch.no_grad():
        a, b = masked(x), physical(x)
    assert float((a - b).norm() / a.norm()) <= 1e-5
    physical.train()
    physical(x).sum().backward()  # the pruned model still trains


def test_swinface_t_size_at_each_sparsity():
    """Only qkv/fc1 inputs shrink: params fall by 7·C·(C − k) per block, MACs by N·7·C·(C − k)."""
    spec, model = swinface("swin_t")
    groups = spec.prunable_groups(model, ("channels",))
    dense_params = measure.count_parameters(model)
    assert dense_params == pytest.approx(28.50e6, abs=0.1e6)
    for sparsity in (0.1, 0.3, 0.5, 0.7):
        pruned = copy.deepcopy(model)
        plan = make_plan(faces().score(pruned, groups, None), groups, sparsity)
        apply_physical(pruned, groups, plan)
        removed = sum(7 * g.size * (g.size - len(plan.groups[g.name].keep)) // 2 for g in groups)
        assert measure.count_parameters(pruned) == dense_params - removed
        if sparsity == 0.5:
            macs = measure.count_macs(pruned, spec.input_size)
            assert macs == pytest.approx(3.27e9, abs=0.02e9)


def test_faces_on_dlib_cnn_uses_affine_scale():
    comp = REGISTRY.get("model", "dlib_resnet")
    spec = comp.create(comp.parse({}, "model"))
    model = spec.build()
    with torch.no_grad():
        for block in model.blocks():
            block.conv1.scale.weight.copy_(torch.randn_like(block.conv1.scale.weight))
    groups = spec.prunable_groups(model, ("filters",))
    scores = faces().score(model, groups, None)
    first = model.blocks()[0]
    assert torch.equal(scores[groups[0].name], first.conv1.scale.weight.detach().abs())


# --- the FACES attribute head (moved here from facekit's SwinFace heads) ---------------------------

def test_faces_attribute_head():
    from corecompress_faces_pruner.api import FacesAttributeHead

    torch.manual_seed(0)
    head = FacesAttributeHead(512)
    first, bn, _, dropout, last = head.net
    assert (first.in_features, first.out_features, last.out_features) == (512, 1024, 40)
    assert isinstance(bn, nn.BatchNorm1d) and dropout.p == 0.2
    assert torch.count_nonzero(first.bias) == 0 and torch.count_nonzero(last.bias) == 0
    assert abs(first.weight.std().item() - math.sqrt(2 / (512 + 1024))) < 0.002  # Xavier normal
    head.eval()
    emb = torch.randn(5, 512)
    assert head(emb).shape == (5, 40)
    assert torch.allclose(head(emb), head(7.0 * emb), atol=1e-5)  # input is L2-normalised


def test_faces_head_is_the_attribute_probe_architecture():
    """facekit's evaluator probe (AttributeHead defaults) and FacesAttributeHead: same weights for one seed."""
    from corecompress_facekit.api import AttributeHead
    from corecompress_faces_pruner.api import FacesAttributeHead

    torch.manual_seed(3)
    probe = AttributeHead(24)
    torch.manual_seed(3)
    faces_head = FacesAttributeHead(24)
    assert isinstance(faces_head, AttributeHead)
    a, b = probe.state_dict(), faces_head.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_faces_says_why_it_leaves_a_group_unscored():
    """Post-norm blocks (SwinV2) have no γ feeding qkv/fc1; heads and neurons have none at all: each
    declined group carries a reason the run's log and report show, instead of a bare 'not scored'."""
    timm = pytest.importorskip("timm")
    from corecompress.engine.preflight import declined_reasons
    from corecompress.pruning.transformer_finder import find_transformer_groups

    model = timm.create_model("swinv2_tiny_window8_256", pretrained=False, num_classes=0, depths=(1, 1, 1, 1),
                              embed_dim=24, num_heads=(3, 3, 4, 6), img_size=64)
    groups = find_transformer_groups(model, (3, 64, 64)).groups
    importance = faces()
    scores = importance.score(model, groups, None)
    assert scores == {}
    reasons = declined_reasons(importance, [g.name for g in groups], REGISTRY.get("importance", "faces"))
    kinds = {g.name: g.kind for g in groups}
    assert {kinds[n] for n, why in reasons.items() if "post-norm" in why} == {"channels"}
    assert {kinds[n] for n, why in reasons.items() if "FACES scores channels only" in why} == {"heads", "neurons"}

    spec, net = swinface("nano")
    pre_norm = spec.prunable_groups(net, ("channels", "heads"))
    mlp_only = faces(branches="mlp")
    scored = mlp_only.score(net, pre_norm, None)
    assert scored and all(name.endswith("mlp_in") for name in scored)
    assert all("branches is 'mlp'" in why for name, why in mlp_only.declined.items() if name.endswith("attn_in"))
