"""CNN filter groups derived from Torch-Pruning's dependency graph (corecompress.pruning.dependency_graph)."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from corecompress.errors import UserError
from corecompress.pruning import make_plan
from corecompress.pruning.agreement import masked_and_physical, masked_physical_error, relative_error
from corecompress.pruning.dependency_graph import graph_filter_groups, probe_plan

pytest.importorskip("torch_pruning")


class Tiny(nn.Module):
    """stem → residual block → depthwise + squeeze-excitation → concat → head: every coupling in one net."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.inner, self.inner_bn = nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.back, self.back_bn = nn.Conv2d(6, 8, 1), nn.BatchNorm2d(8)
        self.dw, self.dw_bn = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.se_reduce, self.se_expand = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.side, self.side_bn = nn.Conv2d(8, 5, 1), nn.BatchNorm2d(5)
        self.mix, self.mix_bn = nn.Conv2d(13, 7, 1), nn.BatchNorm2d(7)
        self.head = nn.Linear(7, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = torch.relu(x + self.back_bn(self.back(torch.relu(self.inner_bn(self.inner(x))))))
        y = torch.relu(self.dw_bn(self.dw(x)))
        y = y * torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(y.mean((2, 3), keepdim=True)))))
        z = torch.cat([y, torch.relu(self.side_bn(self.side(x)))], 1)
        return self.head(torch.relu(self.mix_bn(self.mix(z))).mean((2, 3)))


def randomised(model: nn.Module) -> nn.Module:
    """Non-trivial norm statistics and affine terms, so a wrongly sliced BN shows."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t in (m.weight.data, m.bias.data, m.running_mean):
                t.copy_(torch.randn(t.shape, generator=gen))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def groups_by_name(model: nn.Module, **kwargs) -> dict:
    return {g.name: g for g in graph_filter_groups(model, X, **kwargs)}


def test_groups_cover_residual_depthwise_se_and_concat_couplings() -> None:
    model = randomised(Tiny())
    found = groups_by_name(model, keep_outputs=[model.head])
    assert set(found) == {"stem.filters", "inner.filters", "se_reduce.filters", "side.filters", "mix.filters"}
    stream = {sl.tensor: sl for sl in found["stem.filters"].slices}
    # the residual stream: stem, back (added), the depthwise conv (and its groups), SE expand, concat part 1
    for tensor in ("stem.weight", "back.weight", "back_bn.running_var", "dw.weight", "se_expand.bias", "side.weight"):
        assert tensor in stream
    assert stream["side.weight"].dim == 1 and stream["mix.weight"].offsets == (0,)
    assert ("dw", "groups") in found["stem.filters"].attributes
    assert {sl.tensor: sl.offsets for sl in found["side.filters"].slices}["mix.weight"] == (8,)  # after the concat
    assert found["stem.filters"].scale == "stem_bn.weight" and found["inner.filters"].scale == "inner_bn.weight"
    assert found["se_reduce.filters"].scale is None  # no norm after the SE reduce conv
    assert "head.weight" in {sl.tensor for sl in found["mix.filters"].slices}  # its inputs, never its outputs


def test_masked_equals_physical_and_the_model_shrinks() -> None:
    model = randomised(Tiny())
    groups = graph_filter_groups(model, X, keep_outputs=[model.head])
    plan = make_plan({g.name: torch.rand(g.size) for g in groups}, groups, 0.5)
    masked, physical = masked_and_physical(model, groups, plan)
    with torch.no_grad():
        assert relative_error(masked(X), physical(X)) <= 1e-6
    assert physical.dw.groups == physical.dw.in_channels == physical.dw.out_channels == 4
    assert physical.mix.in_channels == 4 + 2 and physical.mix_bn.num_features == 3  # floor(8/2) + floor(5/2)
    assert physical.head.in_features == 3 and physical.head.out_features == 4


class ChannelNorm(nn.Module):
    """A conv whose channels are normalised together: masking one does not take it out of the statistics."""

    def __init__(self, norm: str) -> None:
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1)
        self.norm = nn.GroupNorm(1, 6) if norm == "group" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = self.norm(y) if self.norm is not None else y - y.mean(1, keepdim=True)  # parameter-free: only the probe sees it
        return self.out(y)


@pytest.mark.parametrize("norm", ["group", "mean"])
def test_channel_statistics_are_left_out(norm: str) -> None:
    model = ChannelNorm(norm).eval()
    assert groups_by_name(model, keep_outputs=[model.out]) == {}
    if norm == "mean":  # without the probe the traced group is offered, and masking would disagree
        unprobed = graph_filter_groups(model, X, keep_outputs=[model.out], probe=False)
        assert [g.name for g in unprobed] == ["conv.filters"]
        assert masked_physical_error(model, unprobed, probe_plan(unprobed), X) > 1e-3


def test_faces_scores_every_cnn_group_with_a_norm_after_its_conv() -> None:
    from corecompress_faces_pruner import FacesImportance, FacesOptions

    model = randomised(Tiny())
    groups = graph_filter_groups(model, X, keep_outputs=[model.head])
    scores = FacesImportance(FacesOptions()).score(model, groups, None)
    assert set(scores) == {g.name for g in groups if g.scale is not None} == {
        "stem.filters", "inner.filters", "side.filters", "mix.filters"}
    assert torch.equal(scores["inner.filters"], model.inner_bn.weight.detach().abs())


def test_without_torch_pruning_one_line_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(UserError) as info:
        graph_filter_groups(Tiny().eval(), X)
    message = str(info.value)
    assert "\n" not in message and "corecompress[torch-pruning]" in message
