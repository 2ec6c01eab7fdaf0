"""SwinFace backbone: presets, acceptance figures, multi-level forward, pruning-friendliness."""
from __future__ import annotations

import copy
import time

import pytest
import torch
from torch import nn

from corecompress_facekit.models.swinface import (
    PRESETS, SwinFaceConfig, build_swinface, count_macs, resolve_config, swin_block_map,
    swin_block_paths,
)
from corecompress_facekit.models.swinface_heads import build_swinface_multitask

torch.set_num_threads(1)


def analytic_macs(cfg: SwinFaceConfig) -> int:
    """Hand count: patch embed + per block (qkv, proj, 2 MLP linears, QK^T and AV) + merges + head."""
    grid = cfg.img_size // cfg.patch_size
    macs = grid * grid * cfg.embed_dim * cfg.in_chans * cfg.patch_size ** 2
    for s, (depth, c, r) in enumerate(zip(cfg.depths, cfg.stage_dims, cfg.stage_resolutions)):
        tokens, area, hidden = r * r, min(cfg.window_size, r) ** 2, int(c * cfg.mlp_ratio)
        if s > 0:
            macs += tokens * (4 * c // 2) * c
        macs += depth * (tokens * (4 * c * c + 2 * c * hidden) + 2 * tokens * area * c)
    c = cfg.stage_dims[-1]
    return macs + c * c + c * cfg.embedding_size


def test_swin_t_preset_is_the_spec_backbone():
    cfg = PRESETS["swin_t"]
    assert (cfg.img_size, cfg.patch_size, cfg.embed_dim, cfg.window_size) == (112, 2, 96, 7)
    assert cfg.depths == (2, 2, 6, 2) and cfg.num_heads == (3, 6, 12, 24)
    assert (cfg.mlp_ratio, cfg.qkv_bias, cfg.drop_path_rate, cfg.embedding_size) == (4.0, True, 0.1, 512)
    assert cfg.stage_dims == (96, 192, 384, 768) and cfg.stage_resolutions == (56, 28, 14, 7)


def test_swin_t_params_and_macs():
    # built on the meta device: same shapes, no weight init; FlopCounterMode only needs shapes
    # (test_count_macs_... checks that meta and CPU counts agree)
    with torch.device("meta"):
        model = build_swinface("swin_t").eval()
    feature = sum(p.numel() for p in model.feature.parameters())
    assert feature == 768 * 768 + 2 * 768 + 768 * 512 + 2 * 512  # Linear, BN, Linear, BN
    total = sum(p.numel() for p in model.parameters())
    assert abs(total - feature - 27.52e6) < 0.01e6   # timm trunk without a head (spec)
    assert abs(total - 28.50e6) < 0.1e6             # spec: 28.50 M
    macs = count_macs(model, torch.empty(1, 3, 112, 112, device="meta"))
    assert macs == analytic_macs(model.config)
    assert abs(macs - 4.48e9) < 0.02e9


def test_nano_and_micro_presets_are_small_and_prunable():
    nano, micro = PRESETS["nano"], PRESETS["micro"]
    assert min(nano.num_heads) >= 2 and min(micro.num_heads) >= 2
    with torch.device("meta"):
        nano_params = sum(p.numel() for p in build_swinface("nano").parameters())
    assert 0.3e6 <= nano_params <= 1.0e6
    assert analytic_macs(nano) <= 50e6 and nano.embedding_size == 128
    assert analytic_macs(micro) < analytic_macs(nano) / 4


def test_micro_trains_fast_and_every_parameter_gets_a_gradient():
    model = build_swinface("micro")
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()  # warm-up
    model.zero_grad()
    start = time.perf_counter()
    out = model(x)
    out.sum().backward()
    assert time.perf_counter() - start < 1.0
    assert out.shape == (2, 32)
    # batch 4 (a BatchNorm over 2 samples gives near-constant outputs) and a random projection
    model.zero_grad()
    weights = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    (model(torch.randn(4, 3, 32, 32)) * weights).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_embedding_head_layout():
    model = build_swinface("micro")
    lin1, bn1, lin2, bn2 = model.feature
    assert lin1.bias is None and lin2.bias is None
    assert (lin1.in_features, lin1.out_features, lin2.out_features) == (64, 64, 32)
    assert bn1.eps == bn2.eps == 2e-5
    assert "head.weight" not in model.state_dict() and not any(k.startswith("trunk.head") for k in model.state_dict())


def test_multilevel_forward_is_consistent_with_forward():
    model = build_swinface("micro").eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        local, global_map, emb = model.forward_features_multilevel(x)
        tokens = model.trunk.layers(model.trunk.patch_embed(x))
        assert torch.allclose(emb, model(x), atol=1e-6)
    assert model.level_channels == (32, 64, 64) and model.feature_resolution == 4
    assert local.shape == (3, 32 + 64, 4, 4) and global_map.shape == (3, 64, 4, 4)
    assert torch.equal(global_map, tokens.permute(0, 3, 1, 2))  # before the final norm


def test_config_validation_and_overrides():
    assert resolve_config("micro", embedding_size=8).embedding_size == 8
    assert build_swinface("micro", depths=[1, 1, 1], num_heads=[2, 2, 2]).config.depths == (1, 1, 1)
    with pytest.raises(ValueError, match="unknown SwinFace preset"):
        resolve_config("swin_xl")
    with pytest.raises(ValueError, match="unknown SwinFaceConfig field"):
        resolve_config("micro", ape=True)
    with pytest.raises(ValueError, match="does not tile"):
        SwinFaceConfig(window_size=6)  # 56 is not a multiple of 6
    with pytest.raises(ValueError, match="not divisible"):
        SwinFaceConfig(num_heads=(5, 6, 12, 24))
    with pytest.raises(ValueError, match="halved"):
        SwinFaceConfig(img_size=104)  # 52 -> 26 -> 13 -> 6.5
    with pytest.raises(ValueError, match="equal length"):
        SwinFaceConfig(depths=(2, 2))


def test_block_paths_follow_reference_numbering():
    with torch.device("meta"):
        model = build_swinface("swin_t")
    paths = swin_block_paths(model)
    assert len(paths) == 12 and paths[0] == "trunk.layers.0.blocks.0" and paths[-1] == "trunk.layers.3.blocks.1"
    assert paths[4:10] == [f"trunk.layers.2.blocks.{b}" for b in range(6)]
    multitask = build_swinface_multitask("micro")
    mapping = swin_block_map(multitask)
    assert mapping["layers.1.blocks.1"] == "backbone.trunk.layers.1.blocks.1"
    block = multitask.get_submodule(mapping["layers.1.blocks.1"])
    assert block is multitask.backbone.trunk.layers[1].blocks[1]
    with pytest.raises(ValueError, match="no Swin"):
        swin_block_paths(nn.Linear(2, 2))


def test_count_macs_counts_attention_and_restores_fused_flags():
    model = build_swinface("micro")
    attentions = [m for m in model.modules() if hasattr(m, "fused_attn")]
    for module in attentions:
        module.fused_attn = True
    macs = count_macs(model, torch.randn(1, 3, 32, 32))
    assert macs == analytic_macs(model.config)
    assert all(module.fused_attn for module in attentions) and model.training
    with torch.device("meta"):
        meta_model = build_swinface("micro")
    assert count_macs(meta_model, torch.empty(1, 3, 32, 32, device="meta")) == macs


# ---------------------------------------------------------------- pruning-friendliness
class IndexSelect(nn.Module):
    def __init__(self, index: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("index", index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(-1, self.index)


def _sliced_linear(linear: nn.Linear, rows=None, cols=None) -> nn.Linear:
    weight = linear.weight.detach()
    weight = weight[rows] if rows is not None else weight
    weight = weight[:, cols] if cols is not None else weight
    out = nn.Linear(weight.shape[1], weight.shape[0])
    out.weight.data.copy_(weight)
    bias = linear.bias.detach()
    out.bias.data.copy_(bias[rows] if rows is not None else bias)
    return out


def test_sliced_qkv_and_slim_norm2_match_the_masked_model():
    torch.manual_seed(0)
    masked = build_swinface("micro").eval()
    block = masked.trunk.layers[0].blocks[1]  # shifted-window block
    kept = torch.tensor([0, 3, 4, 9, 10, 15])
    keep_mask = torch.zeros(16)
    keep_mask[kept] = 1
    with torch.no_grad():
        block.attn.qkv.weight.mul_(keep_mask)
        block.mlp.fc1.weight.mul_(keep_mask)
    physical = copy.deepcopy(masked)
    pblock = physical.trunk.layers[0].blocks[1]
    pblock.attn.qkv = nn.Sequential(IndexSelect(kept), _sliced_linear(pblock.attn.qkv, cols=kept))
    pblock.mlp.fc1 = _sliced_linear(pblock.mlp.fc1, cols=kept)
    pblock.norm2 = nn.Sequential(pblock.norm2, IndexSelect(kept))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = masked.forward_features_multilevel(x)
        got = physical.forward_features_multilevel(x)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert pblock.mlp.fc1.in_features == 6


@pytest.mark.parametrize("stage", [0, 2])  # shifted block with mask; single-window block
def test_fewer_heads_with_sliced_weights_match_the_masked_model(stage):
    torch.manual_seed(1)
    masked = build_swinface("micro").eval()
    attn = masked.trunk.layers[stage].blocks[1].attn
    heads, dim = attn.num_heads, attn.qkv.in_features
    head_dim, keep = dim // heads, torch.tensor([heads - 1])
    cols = torch.cat([h * head_dim + torch.arange(head_dim) for h in keep])
    rows = torch.cat([part * dim + cols for part in range(3)])
    proj_mask = torch.zeros(dim)
    proj_mask[cols] = 1
    original, physical = copy.deepcopy(masked), copy.deepcopy(masked)
    with torch.no_grad():
        attn.proj.weight.mul_(proj_mask)  # dropping a head == zeroing its proj input columns
    pattn = physical.trunk.layers[stage].blocks[1].attn
    pattn.qkv = _sliced_linear(pattn.qkv, rows=rows)
    pattn.proj = _sliced_linear(pattn.proj, cols=cols)
    pattn.relative_position_bias_table = nn.Parameter(pattn.relative_position_bias_table.detach()[:, keep])
    pattn.num_heads = len(keep)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(physical(x), masked(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(physical(x), original(x), atol=1e-4)  # the head did matter
