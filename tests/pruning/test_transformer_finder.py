"""Transformer blocks found by what they do: each fix-up on a hand-written block, then timm's families.

Every case prunes all kinds together and asserts masked ≡ physical (rel. err ≤ 1e-5), forward and
backward of the pruned model, and FACES scores from the norm before each consumer; a kind the block
cannot give is a refusal with its reason, while the other kinds are still offered.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from corecompress.pruning.masking import apply_masks
from corecompress.pruning.physical import apply_physical
from corecompress.pruning.transformer_finder import find_transformer_groups
from corecompress.pruning.transformer_fixups import fold_split_qkv_biases
from corecompress.pruning.verify import TOLERANCE, randomise_weights, relative_error, thinning_plan
from corecompress_faces_pruner import FacesImportance, FacesOptions

timm = pytest.importorskip("timm")
KINDS = ("channels", "heads", "neurons")


class ZooAttention(nn.Module):
    """Every per-head extra at once, with a width-agnostic forward: a fused qkv without bias plus
    BEiT-style q/v biases (k's a zero buffer), SwinV2's cosine attention (cpb MLP → one value per head,
    ``logit_scale`` (heads, 1, 1)), a BEiT-style relative-position table (entries, heads), talking heads."""

    def __init__(self, dim: int = 24, heads: int = 3, head_dim: int = 5, tokens: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(inner))
        self.v_bias = nn.Parameter(torch.zeros(inner))
        self.register_buffer("k_bias", torch.zeros(inner), persistent=False)
        self.logit_scale = nn.Parameter(torch.zeros(heads, 1, 1))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, heads, bias=False))
        self.register_buffer("coords", torch.randn(tokens, tokens, 2))
        self.relative_position_bias_table = nn.Parameter(torch.zeros(2 * tokens - 1, heads))
        index = torch.arange(tokens)[:, None] - torch.arange(tokens)[None, :] + tokens - 1
        self.register_buffer("relative_position_index", index)
        self.proj_l = nn.Linear(heads, heads)
        self.proj_w = nn.Linear(heads, heads)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x) + torch.cat((self.q_bias, self.k_bias, self.v_bias))
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * self.logit_scale.exp()
        attn = attn + self.cpb_mlp(self.coords).permute(2, 0, 1)
        attn = attn + self.relative_position_bias_table[self.relative_position_index].permute(2, 0, 1)
        attn = self.proj_l(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).softmax(-1)
        attn = self.proj_w(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class SplitAttention(nn.Module):
    """PVT-style q + kv (kv of 2 · inner) after a spatial-reduction conv and its own norm."""

    def __init__(self, dim: int = 24, heads: int = 3) -> None:
        super().__init__()
        self.num_heads = heads
        self.q = nn.Linear(dim, dim)
        self.sr = nn.Conv1d(dim, dim, 2, 2)
        self.norm = nn.LayerNorm(dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
        reduced = self.norm(self.sr(x.transpose(1, 2)).transpose(1, 2))
        k, v = self.kv(reduced).reshape(b, -1, 2, self.num_heads, q.shape[-1]).permute(2, 0, 3, 1, 4)
        out = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class SwiGLU(nn.Module):
    """Separate gate and value linears (timm's SwiGLU), a BatchNorm on the hidden units."""

    def __init__(self, dim: int = 24, hidden: int = 20) -> None:
        super().__init__()
        self.fc1_g, self.fc1_x = nn.Linear(dim, hidden), nn.Linear(dim, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.fc1_g(x)) * self.fc1_x(x)
        return self.fc2(self.bn(h.transpose(1, 2)).transpose(1, 2))


class ChunkedGlu(nn.Module):
    """One fc1 of 2 · hidden chunked into value and gate (timm's GluMlp), optionally a norm over hidden."""

    def __init__(self, dim: int = 24, hidden: int = 18, hidden_norm: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.norm = nn.LayerNorm(hidden) if hidden_norm else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(self.norm(a * torch.sigmoid(gate)))


class Block(nn.Module):
    """Pre-norm block with layer scale on both residual branches."""

    def __init__(self, attn: nn.Module, mlp: nn.Module, dim: int = 24) -> None:
        super().__init__()
        self.n1, self.attention, self.n2, self.ffn = nn.LayerNorm(dim), attn, nn.LayerNorm(dim), mlp
        self.gamma_1, self.gamma_2 = nn.Parameter(torch.full((dim,), 0.5)), nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gamma_1 * self.attention(self.n1(x))
        return x + self.gamma_2 * self.ffn(self.n2(x))


class Net(nn.Module):
    def __init__(self, *blocks: nn.Module, dim: int = 24) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.embed(x).flatten(2).transpose(1, 2)).mean(1)


def _check_pruned(model: nn.Module, groups, size: int) -> None:
    """All groups thinned together: masked ≡ physical, and the pruned model trains."""
    torch.manual_seed(0)
    model = model.eval()
    randomise_weights(model)
    plan = thinning_plan(groups)
    x = torch.randn(2, 3, size, size)
    masked_model = _copy(model)
    apply_masks(masked_model, groups, plan)
    pruned = apply_physical(_copy(model), groups, plan)
    fold_split_qkv_biases(pruned)  # the face plugin's after_physical_prune fix-up
    with torch.no_grad():
        assert relative_error(masked_model(x), pruned(x)) <= TOLERANCE
    pruned.train()
    pruned(x).square().mean().backward()
    params = dict(pruned.named_parameters())
    assert all(torch.isfinite(p.grad).all() for p in params.values() if p.grad is not None)
    for g in groups:  # every pruned tensor still learns
        assert params[g.slices[0].tensor].grad is not None, g.name
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def _faces_scales_are_the_feeding_norms(model: nn.Module, groups) -> dict[str, str]:
    channels = [g for g in groups if g.kind == "channels"]
    scores = FacesImportance(FacesOptions()).score(model, groups, None)
    assert set(scores) == {g.name for g in channels if g.scale}
    return {g.name: g.scale for g in channels}


def test_every_per_head_extra_is_sliced_with_its_heads():
    net = Net(Block(ZooAttention(), SwiGLU()), Block(SplitAttention(), ChunkedGlu()))
    finding = find_transformer_groups(net, (3, 8, 8))
    assert finding.refusals == [] and finding.blocks == ["blocks.0", "blocks.1"]
    by_name = {g.name: g for g in finding.groups}
    heads = {s.tensor: s for s in by_name["blocks.0.heads"].slices}
    assert heads["blocks.0.attention.q_bias"].width == 5
    assert {"blocks.0.attention.v_bias", "blocks.0.attention.k_bias", "blocks.0.attention.logit_scale",
            "blocks.0.attention.cpb_mlp.2.weight", "blocks.0.attention.relative_position_bias_table",
            "blocks.0.attention.proj_l.weight", "blocks.0.attention.proj_w.bias"} <= set(heads)
    assert "blocks.0.attention.cpb_mlp.0.weight" not in heads and "blocks.0.attention.coords" not in heads
    split = {s.tensor: s.offsets for s in by_name["blocks.1.heads"].slices}
    assert split["blocks.1.attention.kv.weight"] == (0, 24) and "blocks.1.attention.sr.weight" not in split
    neurons = {s.tensor for s in by_name["blocks.0.mlp_hidden"].slices}
    assert {"blocks.0.ffn.fc1_g.weight", "blocks.0.ffn.fc1_x.bias", "blocks.0.ffn.bn.running_var"} <= neurons
    glu = {s.tensor: s.offsets for s in by_name["blocks.1.mlp_hidden"].slices}
    assert glu["blocks.1.ffn.fc1.weight"] == (0, 18)
    # FACES: the norm right before each consumer; PVT's kv reads the attention's own norm, not n1
    assert _faces_scales_are_the_feeding_norms(net, finding.groups) == {
        "blocks.0.attn_in": "blocks.0.n1.weight", "blocks.0.mlp_in": "blocks.0.n2.weight",
        "blocks.1.attn_in": "blocks.1.n1.weight", "blocks.1.mlp_in": "blocks.1.n2.weight"}
    assert by_name["blocks.1.attn_in"].gather_inputs == ("blocks.1.attention.q",)
    _check_pruned(net, finding.groups, 8)


def test_norms_over_all_heads_or_all_neurons_refuse_that_kind_only():
    class ScaleNormAttention(ZooAttention):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(15)

        def forward(self, x):  # noqa: ANN001, ANN202
            b, n, _ = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            out = ((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1)
            return self.proj(self.norm(out))

    net = Net(Block(ScaleNormAttention(), ChunkedGlu(hidden_norm=True)))
    finding = find_transformer_groups(net, (3, 8, 8))
    assert {g.kind for g in finding.groups} == {"channels", "heads"}
    assert [(r.kind, r.reason[:45]) for r in finding.refusals] == [
        ("neurons", "blocks.0.ffn.norm normalises all hidden units")]
    # heads: a norm over all heads' outputs sees zeros for removed heads in both models if the core keeps
    # every head, so they come out of the projections only, with the reason the whole head could not
    heads = next(g for g in finding.groups if g.kind == "heads")
    assert heads.meta["projections_only"] and heads.scatter_outputs == ("blocks.0.attention.qkv",)
    assert heads.gather_inputs == ("blocks.0.attention.proj",) and not heads.attributes
    assert [r.reason[:53] for r in finding.partial] == ["blocks.0.attention.norm normalises all heads' outputs"]
    _check_pruned(net, finding.groups, 8)


ALL = set(KINDS)
TIMM_CASES = {
    # name: (create_model kwargs, img_size, kinds found in every block, heads from the projections only)
    "vit_tiny_patch16_224": ({"depth": 2}, 32, ALL, False),
    "deit3_small_patch16_224": ({"depth": 2, "embed_dim": 96, "num_heads": 4}, 32, ALL, False),   # layer scale
    "swin_tiny_patch4_window7_224": ({"depths": (1, 1, 1, 1), "embed_dim": 24, "num_heads": (2, 3, 4, 6)}, 56,
                                     ALL, False),                                    # rel-pos table, windows
    "maxvit_tiny_rw_224": ({"depths": (1, 1, 1, 1)}, 64, ALL, False),               # head-first qkv, rel-pos bias
    "pvt_v2_b0": ({}, 64, {"channels", "neurons"}, True),    # q + kv, sr conv, dwconv MLP; stage 1 has one head
    "eva02_tiny_patch14_224": ({"depth": 2}, 28, ALL, True),                        # rope, SwiGLU, q/v bias
    "beit_base_patch16_224": ({"depth": 2, "embed_dim": 96, "num_heads": 4}, 32, ALL, True),  # q/v bias, rel-pos
    "xcit_nano_12_p16_224": ({"depth": 2}, 32, ALL, True),                 # temperature, class attention, LPI
    "cait_xxs24_224": ({"depth": 2, "depth_token_only": 1}, 32, ALL, True),  # talking heads, class attention
    "swinv2_tiny_window8_256": ({"depths": (1, 1, 1, 1), "embed_dim": 24, "num_heads": (3, 3, 4, 6)}, 64,
                                ALL, True),                                   # cpb MLP, logit scale, post-norm
}


@pytest.mark.parametrize("name", list(TIMM_CASES))
def test_timm_families(name):
    kwargs, size, everywhere, projections_only = TIMM_CASES[name]
    if name != "pvt_v2_b0":
        kwargs = {**kwargs, "img_size": size}
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    finding = find_transformer_groups(model, (3, size, size))
    assert finding.blocks
    for block in finding.blocks:
        kinds = {g.kind for g in finding.groups if g.block == block}
        assert everywhere <= kinds, (block, kinds)
    assert finding.refusals == []
    heads = [g for g in finding.groups if g.kind == "heads"]
    assert heads and {bool(g.meta.get("projections_only")) for g in heads} == {projections_only}
    assert len(finding.partial) == (len(heads) if projections_only else 0)
    assert all(r.reason and "\n" not in r.reason for r in finding.partial)
    scales = _faces_scales_are_the_feeding_norms(model, finding.groups)
    if name.startswith("swinv2"):  # post-norm residuals: no norm feeds a consumer, so FACES has no scale
        assert set(scales.values()) == {None}
    else:  # pre-norm: FACES scores every channels group by the norm right before it
        assert None not in scales.values() and all(s.endswith("norm1.weight") or s.endswith("norm2.weight")
                                                   or s.endswith("norm.weight") for s in scales.values()), scales
    _check_pruned(model, finding.groups, size)


def test_the_face_plugin_folds_split_biases_after_removal():
    from corecompress_facekit.plugin import after_physical_prune

    model = timm.create_model("beit_base_patch16_224", pretrained=False, num_classes=0, img_size=32, depth=1,
                              embed_dim=48, num_heads=4).eval()
    groups = [g for g in find_transformer_groups(model, (3, 32, 32), ("channels",)).groups if g.name.endswith("attn_in")]
    assert groups and groups[0].scale == "blocks.0.norm1.weight"
    pruned = apply_physical(_copy(model), groups, thinning_plan(groups))
    after_physical_prune(run=None, model=pruned, plan=None)
    attn = pruned.blocks[0].attn
    assert attn.q_bias is None and attn.qkv.bias.shape == (3 * 48,) and attn.qkv.in_features == 32
    masked = _copy(model)
    apply_masks(masked, groups, thinning_plan(groups))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert relative_error(masked(x), pruned(x)) <= TOLERANCE


def _adapter(name: str, img_size: int):
    from corecompress_facekit.adapters import TimmBackboneAdapter, TimmBackboneOptions

    adapter = TimmBackboneAdapter(TimmBackboneOptions(model_name=name, embedding_size=8, img_size=img_size))
    return adapter, adapter.build()


@pytest.mark.parametrize("name, img_size", [("vit_tiny_patch16_224", 32), ("swin_tiny_patch4_window7_224", 56)])
def test_the_timm_adapter_finds_the_groups_the_attribute_names_gave(name, img_size):
    from corecompress_facekit.adapters import transformer_groups

    adapter, model = _adapter(name, img_size)
    found = adapter.prunable_groups(model, KINDS)
    paths = list(dict.fromkeys(g.block for g in found))
    named = transformer_groups(model, paths, KINDS, "relative_position_bias_table")
    assert [g.name for g in found] == [g.name for g in named]
    for a, b in zip(found, named):
        assert (a.kind, a.size, a.scale, set(a.slices), a.gather_inputs) == (b.kind, b.size, b.scale, set(b.slices),
                                                                              b.gather_inputs), a.name
        assert set(a.attributes) == set(b.attributes), a.name


def test_projection_only_heads_are_one_warning_naming_the_blocks():
    adapter, model = _adapter("cait_xxs24_224", 32)
    with pytest.warns(UserWarning) as caught:
        groups = adapter.prunable_groups(model, ("channels", "heads"))
    lines = [str(w.message) for w in caught]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith("prune.targets: heads come out of q/k/v and the output projection only (the attention "
                               "still runs every head) in 26 block(s) (backbone.blocks.0, backbone.blocks.1")
    assert "TalkingHeadAttn" in lines[0]
    assert {g.kind for g in groups} == {"channels", "heads"} and len(groups) == 3 * 26


def test_a_refused_kind_is_a_warning_and_an_error_when_nothing_is_left():
    from corecompress.errors import UserError
    from corecompress_facekit.adapters import refusals_said

    net = Net(Block(ZooAttention(), ChunkedGlu(hidden_norm=True)), Block(ZooAttention(), SwiGLU()))
    finding = find_transformer_groups(net, (3, 8, 8), ("neurons",))
    with pytest.warns(UserWarning, match=r"^prune.targets: neurons not prunable in 1 block\(s\) \(blocks.0\): "
                                         r"blocks.0.ffn.norm normalises"):
        assert [g.name for g in refusals_said(finding, ("neurons",))] == ["blocks.1.mlp_hidden"]
    lone = find_transformer_groups(Net(Block(ZooAttention(), ChunkedGlu(hidden_norm=True))), (3, 8, 8), ("neurons",))
    with pytest.raises(UserError, match=r"^prune.targets: neurons not prunable in 1 block\(s\) \(blocks.0\)"):
        refusals_said(lone, ("neurons",))


def test_a_model_that_fails_on_its_input_size_is_a_refusal_not_a_crash():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, depth=1)
    finding = find_transformer_groups(model, (3, 48, 48))  # not the size it was built for
    assert finding.groups == [] and {r.kind for r in finding.refusals} == set(KINDS)
    assert finding.refusals[0].reason.startswith("the model's forward fails on a batch of 2 of (3, 48, 48)")
