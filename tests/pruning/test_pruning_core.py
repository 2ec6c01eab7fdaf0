"""Plans, soft masks and physical removal on the test kit's tiny models."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from corecompress.tools import measure
from corecompress.pruning import PruningPlan, make_plan
from corecompress.pruning.groups import check_groups
from corecompress.pruning.masking import apply_masks
from corecompress.pruning.physical import GatheredLinear, apply_physical
from corecompress.pruning.plan import keep_count
from corecompress_builtin.tiny_models import TinyCNN, TinyViT

VIT_TARGETS = [("channels",), ("heads",), ("neurons",), ("channels", "heads", "neurons")]


def _randomise_bn(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()


@pytest.mark.parametrize("targets", VIT_TARGETS, ids=["+".join(t) for t in VIT_TARGETS])
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
def test_vit_masked_equals_physical_and_is_smaller(targets, sparsity):
    torch.manual_seed(1)
    model = TinyViT().eval()
    groups = model.prunable_groups(targets)
    check_groups(model, groups)
    plan = make_plan({g.name: torch.rand(g.size) for g in groups}, groups, sparsity)
    masked, physical = copy.deepcopy(model), copy.deepcopy(model)
    apply_masks(masked, groups, plan)
    apply_physical(physical, groups, plan)
    x = torch.randn(3, 3, 16, 16)
    a, b = masked(x), physical(x)
    assert float((a - b).norm() / a.norm()) <= 1e-5
    assert measure.count_parameters(physical) < measure.count_parameters(model)
    assert measure.count_macs(physical, (3, 16, 16)) < measure.count_macs(model, (3, 16, 16))
    b.sum().backward()  # the pruned model trains
    assert all(p.grad is not None for p in physical.parameters() if p.requires_grad)


def test_masked_is_not_smaller():
    model = TinyViT().eval()
    groups = model.prunable_groups()
    plan = make_plan({g.name: torch.rand(g.size) for g in groups}, groups, 0.5)
    masked = copy.deepcopy(model)
    apply_masks(masked, groups, plan)
    assert measure.count_parameters(masked) == measure.count_parameters(model)
    assert measure.count_nonzero_parameters(masked) < measure.count_nonzero_parameters(model)


def test_cnn_filters_masked_equals_physical():
    torch.manual_seed(2)
    model = TinyCNN()
    _randomise_bn(model)
    model.eval()
    groups = model.prunable_groups()
    plan = make_plan({g.name: torch.rand(g.size) for g in groups}, groups, 0.5)
    masked, physical = copy.deepcopy(model), copy.deepcopy(model)
    apply_masks(masked, groups, plan)
    apply_physical(physical, groups, plan)
    x = torch.randn(2, 3, 16, 16)
    a, b = masked(x), physical(x)
    assert float((a - b).norm() / a.norm()) <= 1e-5
    assert physical.blocks[0].conv1.out_channels == 8 and physical.blocks[0].bn1.num_features == 8


def test_physical_heads_fix_num_heads_and_channels_gather():
    model = TinyViT(num_heads=4).eval()
    groups = model.prunable_groups(("channels", "heads"))
    plan = make_plan({g.name: torch.arange(g.size, dtype=torch.float) for g in groups}, groups, 0.5)
    apply_physical(model, groups, plan)
    attn = model.blocks[0].attn
    assert attn.num_heads == 2
    assert isinstance(attn.qkv, GatheredLinear)
    assert attn.qkv.input_index.tolist() == list(range(16, 32))  # the highest scores are kept
    assert tuple(attn.qkv.weight.shape) == (3 * 16, 16)
    assert tuple(attn.proj.weight.shape) == (32, 16)


def test_keep_count_is_floor_and_robust_to_float_error():
    assert keep_count(96, 0.3) == 67          # floor(67.2)
    assert keep_count(96, 0.5) == 48
    assert keep_count(10, 0.9) == 1           # 10·(1−0.9) is 0.99999… in floating point
    assert keep_count(4, 0.99) == 1           # never below min_keep


def test_local_plan_ties_break_by_index():
    groups = TinyViT().prunable_groups(("channels",))
    scores = {g.name: torch.ones(g.size) for g in groups}
    plan = make_plan(scores, groups, 0.5)
    for g in plan.groups.values():
        assert g.keep == list(range(16))


def test_global_plan_budget_and_floor():
    groups = TinyViT().prunable_groups(("neurons",))
    # block 0 scores all high, block 1 all low: a global ranking keeps block 0 first, block 1 keeps its floor
    scores = {groups[0].name: torch.full((64,), 10.0) + torch.rand(64), groups[1].name: torch.rand(64)}
    plan = make_plan(scores, groups, 0.5, scope="global", min_keep_fraction=0.25)
    kept = [len(plan.groups[g.name].keep) for g in groups]
    assert sum(kept) == 64
    assert kept == [48, 16]


def test_plan_json_roundtrip_and_validation(tmp_path):
    groups = TinyViT().prunable_groups()
    plan = make_plan({g.name: torch.rand(g.size) for g in groups}, groups, 0.3, meta={"importance": "x"})
    plan.save(tmp_path / "plan.json")
    again = PruningPlan.load(tmp_path / "plan.json")
    assert again.to_dict() == plan.to_dict()
    bad = json.loads((tmp_path / "plan.json").read_text())
    first = next(iter(bad["groups"]))
    bad["groups"][first]["keep"] = [5, 3]
    with pytest.raises(ValueError, match="sorted unique"):
        PruningPlan.from_dict(bad)
    other = TinyViT(dim=48).prunable_groups()
    with pytest.raises(ValueError, match="size"):
        plan.check(other)


def test_masks_stay_zero_through_training():
    from corecompress_builtin.appliers import MaskApplier, reapply_masks

    torch.manual_seed(0)
    model = TinyViT()
    groups = model.prunable_groups()
    plan = make_plan({g.name: torch.rand(g.size) for g in groups}, groups, 0.5)

    class Ctx:
        masks = None
    ctx = Ctx()
    MaskApplier().apply(model, groups, plan, ctx)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(3):
        model(torch.randn(4, 3, 16, 16)).sum().backward()
        opt.step()
        opt.zero_grad()
        reapply_masks(ctx, model)
    for name, mask in ctx.masks.masks.items():
        tensor = dict(model.named_parameters())[name]
        assert torch.all(tensor[mask == 0] == 0), name
    assert ctx.masks.nonzero_fraction() < 1.0
