"""Reference SwinFace checkpoints load into our timm-based model with identical outputs.

The reference layout is rebuilt here from scratch: a tiny functional Swin written the way the
reference stores it (``layers.{s}.blocks.{b}``, patch merge under ``layers.{s}.downsample`` *after*
stage s, neighbours concatenated (row, col) = (0,0), (1,0), (0,1), (1,1)), with its own window
partition, shift masks and relative-position index.  No timm code is used on this side.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from corecompress_facekit.models.swinface import SwinFaceConfig, build_swinface, resolve_config
from corecompress_facekit.models.swinface_checkpoint import (
    DataFormatError, build_reference_backbone, convert_reference_backbone_state,
    infer_reference_config, load_reference_backbone, load_reference_multitask, merge_permutation,
)
from corecompress_facekit.models.swinface_heads import build_swinface_multitask

torch.set_num_threads(1)

# Same geometry as swin_t (112 px, patch 2, window 7, 4 stages: 64-window shifted masks in stage 0),
# but very thin so the test stays fast.
SLIM_SWIN_T = SwinFaceConfig(img_size=112, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
                             embedding_size=16)
CONFIGS = {"micro": resolve_config("micro"), "slim_swin_t": SLIM_SWIN_T}


# ---------------------------------------------------------------- reference-style model (no timm)
def ref_relative_index(w: int) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
    r, c = rows.flatten(), cols.flatten()
    return (r[:, None] - r[None, :] + w - 1) * (2 * w - 1) + (c[:, None] - c[None, :] + w - 1)


def ref_windows(x: torch.Tensor, w: int) -> torch.Tensor:
    b, h, wd, c = x.shape
    return x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)


def ref_unwindows(win: torch.Tensor, w: int, b: int, h: int, wd: int) -> torch.Tensor:
    c = win.shape[-1]
    return win.view(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, wd, c)


def ref_mask(res: int, w: int, shift: int) -> torch.Tensor:
    region = torch.zeros(1, res, res, 1)
    spans = ((0, res - w), (res - w, res - shift), (res - shift, res))
    label = 0
    for r0, r1 in spans:
        for c0, c1 in spans:
            region[:, r0:r1, c0:c1] = label
            label += 1
    win = ref_windows(region, w).squeeze(-1)
    diff = win[:, None, :] - win[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


def ref_block(x, res, sd, pre, heads, w, shift):
    b, n_tok, c = x.shape
    h = F.layer_norm(x, (c,), sd[pre + "norm1.weight"], sd[pre + "norm1.bias"]).view(b, res, res, c)
    if shift:
        h = torch.roll(h, (-shift, -shift), (1, 2))
    win = ref_windows(h, w)
    bn, n, _ = win.shape
    qkv = F.linear(win, sd[pre + "attn.qkv.weight"], sd[pre + "attn.qkv.bias"])
    q, k, v = qkv.view(bn, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    attn = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    table = sd[pre + "attn.relative_position_bias_table"]
    attn = attn + table[ref_relative_index(w).view(-1)].view(n, n, heads).permute(2, 0, 1)
    if shift:
        mask = ref_mask(res, w, shift)
        attn = (attn.view(b, mask.shape[0], heads, n, n) + mask[None, :, None]).view(bn, heads, n, n)
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(bn, n, c)
    out = F.linear(out, sd[pre + "attn.proj.weight"], sd[pre + "attn.proj.bias"])
    out = ref_unwindows(out, w, b, res, res)
    if shift:
        out = torch.roll(out, (shift, shift), (1, 2))
    x = x + out.reshape(b, n_tok, c)
    h = F.layer_norm(x, (c,), sd[pre + "norm2.weight"], sd[pre + "norm2.bias"])
    h = F.linear(F.gelu(F.linear(h, sd[pre + "mlp.fc1.weight"], sd[pre + "mlp.fc1.bias"])),
                 sd[pre + "mlp.fc2.weight"], sd[pre + "mlp.fc2.bias"])
    return x + h


def ref_merge(x, res, sd, pre):
    b, _, c = x.shape
    g = x.view(b, res, res, c)
    parts = [g[:, 0::2, 0::2], g[:, 1::2, 0::2], g[:, 0::2, 1::2], g[:, 1::2, 1::2]]
    x = torch.cat(parts, -1).view(b, -1, 4 * c)
    x = F.layer_norm(x, (4 * c,), sd[pre + "norm.weight"], sd[pre + "norm.bias"])
    return F.linear(x, sd[pre + "reduction.weight"])


def ref_batchnorm(x, sd, pre):
    return (x - sd[pre + "running_mean"]) / torch.sqrt(sd[pre + "running_var"] + 2e-5) \
        * sd[pre + "weight"] + sd[pre + "bias"]


def ref_forward(sd, cfg: SwinFaceConfig, img):
    x = F.conv2d(img, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=cfg.patch_size)
    x = x.flatten(2).transpose(1, 2)
    x = F.layer_norm(x, (x.shape[-1],), sd["patch_embed.norm.weight"], sd["patch_embed.norm.bias"])
    res, local = cfg.img_size // cfg.patch_size, []
    for s, depth in enumerate(cfg.depths):
        w = min(cfg.window_size, res)
        for blk in range(depth):
            shift = w // 2 if (blk % 2 and res > cfg.window_size) else 0
            x = ref_block(x, res, sd, f"layers.{s}.blocks.{blk}.", cfg.num_heads[s], w, shift)
        if s < len(cfg.depths) - 1:
            x = ref_merge(x, res, sd, f"layers.{s}.downsample.")
            res //= 2
            local.append(x.transpose(1, 2).reshape(x.shape[0], -1, res, res))
    side = res
    pooled = [lv.reshape(lv.shape[0], lv.shape[1], side, lv.shape[2] // side, side, lv.shape[3] // side)
              .mean(dim=(3, 5)) for lv in local]
    global_map = x.transpose(1, 2).reshape(x.shape[0], -1, side, side)
    e = F.layer_norm(x, (x.shape[-1],), sd["norm.weight"], sd["norm.bias"]).mean(1)
    e = ref_batchnorm(F.linear(e, sd["feature.0.weight"]), sd, "feature.1.")
    e = ref_batchnorm(F.linear(e, sd["feature.2.weight"]), sd, "feature.3.")
    return torch.cat(pooled, 1), global_map, e


def make_reference_state(cfg: SwinFaceConfig, seed: int = 0) -> dict:
    """Random weights under the reference key names (spec swinface.md), buffers included."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    def linear(key, n_out, n_in, bias=True):
        sd[key + ".weight"] = rnd(n_out, n_in, scale=n_in ** -0.5)
        if bias:
            sd[key + ".bias"] = rnd(n_out, scale=0.1)

    def norm(key, n):
        sd[key + ".weight"], sd[key + ".bias"] = 1 + rnd(n, scale=0.2), rnd(n, scale=0.1)

    sd: dict[str, torch.Tensor] = {}
    c0, p = cfg.embed_dim, cfg.patch_size
    sd["patch_embed.proj.weight"] = rnd(c0, cfg.in_chans, p, p, scale=0.3)
    sd["patch_embed.proj.bias"] = rnd(c0, scale=0.1)
    norm("patch_embed.norm", c0)
    res = cfg.img_size // p
    for s, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
        c, w = cfg.stage_dims[s], min(cfg.window_size, res)
        for blk in range(depth):
            pre = f"layers.{s}.blocks.{blk}."
            norm(pre + "norm1", c)
            sd[pre + "attn.relative_position_bias_table"] = rnd((2 * w - 1) ** 2, heads, scale=0.5)
            sd[pre + "attn.relative_position_index"] = ref_relative_index(w)
            linear(pre + "attn.qkv", 3 * c, c)
            linear(pre + "attn.proj", c, c)
            norm(pre + "norm2", c)
            linear(pre + "mlp.fc1", int(c * cfg.mlp_ratio), c)
            linear(pre + "mlp.fc2", c, int(c * cfg.mlp_ratio))
            if blk % 2 and res > cfg.window_size:
                sd[pre + "attn_mask"] = ref_mask(res, w, w // 2)
        if s < len(cfg.depths) - 1:
            norm(f"layers.{s}.downsample.norm", 4 * c)
            linear(f"layers.{s}.downsample.reduction", 2 * c, 4 * c, bias=False)
            res //= 2
    c, e = cfg.stage_dims[-1], cfg.embedding_size
    norm("norm", c)
    linear("head", 512, c)
    for index, width in ((0, c), (2, e)):
        sd[f"feature.{index}.weight"] = rnd(width, c, scale=c ** -0.5)
        norm(f"feature.{index + 1}", width)
        sd[f"feature.{index + 1}.running_mean"] = rnd(width, scale=0.1)
        sd[f"feature.{index + 1}.running_var"] = 0.5 + torch.rand(width, generator=gen)
        sd[f"feature.{index + 1}.num_batches_tracked"] = torch.tensor(7)
    return sd


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_loaded_model_matches_reference_forward(name):
    cfg = CONFIGS[name]
    sd = make_reference_state(cfg)
    model = build_swinface(cfg)
    report = load_reference_backbone(model, sd)
    model.eval()
    img = torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_local, ref_global, ref_emb = ref_forward(sd, cfg, img)
        local, global_map, emb = model.forward_features_multilevel(img)
        plain = model(img)
    assert local.shape == ref_local.shape and global_map.shape == ref_global.shape
    assert rel_err(local, ref_local) <= 1e-5
    assert rel_err(global_map, ref_global) <= 1e-5
    assert rel_err(emb, ref_emb) <= 1e-5
    assert rel_err(plain, ref_emb) <= 1e-5
    assert report.missing == [] and report.unexpected == []
    assert any("head.weight" in note for note in report.notes)


def test_every_tensor_lands_in_its_place():
    cfg = CONFIGS["slim_swin_t"]
    sd = make_reference_state(cfg)
    model = build_swinface(cfg)
    report = load_reference_backbone(model, sd)
    trunk = model.trunk
    # downsample after reference stage s sits at the start of timm stage s+1
    for s in range(3):
        dim = cfg.stage_dims[s]
        perm = merge_permutation(dim)
        merge = trunk.layers[s + 1].downsample
        assert torch.equal(merge.reduction.weight, sd[f"layers.{s}.downsample.reduction.weight"][:, perm])
        assert torch.equal(merge.norm.weight, sd[f"layers.{s}.downsample.norm.weight"][perm])
    assert torch.equal(trunk.layers[2].blocks[1].attn.qkv.weight, sd["layers.2.blocks.1.attn.qkv.weight"])
    assert torch.equal(trunk.layers[3].blocks[0].attn.relative_position_bias_table,
                       sd["layers.3.blocks.0.attn.relative_position_bias_table"])
    assert torch.equal(trunk.patch_embed.proj.weight, sd["patch_embed.proj.weight"])
    assert torch.equal(trunk.norm.bias, sd["norm.bias"])
    assert torch.equal(model.feature[3].running_var, sd["feature.3.running_var"])
    assert int(model.feature[1].num_batches_tracked) == 7
    # every persistent tensor of the model came from the checkpoint
    assert report.loaded == len(model.state_dict())


def test_timm_merge_order_is_the_reference_order():
    # timm 1.0.x concatenates the 2x2 neighbours as (0,0),(1,0),(0,1),(1,1): no permutation needed.
    assert torch.equal(merge_permutation(3), torch.arange(12))
    # a column-first reference order would need slots 1 and 2 swapped (hand-computed)
    col_first = ((0, 0), (0, 1), (1, 0), (1, 1))
    assert merge_permutation(1, col_first).tolist() == [0, 2, 1, 3]
    assert merge_permutation(2, col_first).tolist() == [0, 1, 4, 5, 2, 3, 6, 7]
    with pytest.raises(ValueError):
        merge_permutation(2, ((0, 0), (0, 0), (1, 0), (1, 1)))


def test_wrong_neighbour_order_would_be_detected():
    cfg = CONFIGS["micro"]
    sd = make_reference_state(cfg)
    model = build_swinface(cfg).eval()
    mapped, _ = convert_reference_backbone_state(
        sd, model, reference_merge_order=((0, 0), (0, 1), (1, 0), (1, 1)))
    model.load_state_dict(mapped)
    img = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        assert rel_err(model(img), ref_forward(sd, cfg, img)[2]) > 1e-3


def test_missing_unexpected_and_misshaped_keys_raise_one_line():
    cfg = CONFIGS["micro"]
    model = build_swinface(cfg)
    sd = make_reference_state(cfg)
    del sd["layers.0.downsample.norm.weight"], sd["layers.1.blocks.0.mlp.fc1.bias"]
    with pytest.raises(DataFormatError, match=r"2 missing key\(s\): .*layers\.1\.blocks\.0\.mlp\.fc1\.bias") as err:
        load_reference_backbone(model, sd)
    assert "layers.0.downsample.norm.weight" in str(err.value) and "\n" not in str(err.value)

    sd = make_reference_state(cfg)
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(DataFormatError, match=r"unexpected key\(s\): extra\.weight"):
        load_reference_backbone(model, sd)

    sd = make_reference_state(cfg)
    sd["layers.0.blocks.0.attn.relative_position_bias_table"] = torch.zeros(3, 2)
    with pytest.raises(DataFormatError, match="shape mismatch"):
        load_reference_backbone(model, sd)


def test_non_strict_reports_instead_of_raising():
    cfg = CONFIGS["micro"]
    model = build_swinface(cfg)
    sd = make_reference_state(cfg)
    del sd["layers.1.downsample.reduction.weight"]
    sd["extra.weight"] = torch.zeros(1)
    report = load_reference_backbone(model, sd, strict=False)
    assert report.missing == ["layers.1.downsample.reduction.weight"]
    assert report.unexpected == ["extra.weight"]
    assert torch.equal(model.trunk.layers[1].downsample.reduction.weight,
                       sd["layers.0.downsample.reduction.weight"][:, merge_permutation(16)])


def test_buffers_are_verified():
    cfg = CONFIGS["micro"]
    model = build_swinface(cfg)
    sd = make_reference_state(cfg)
    sd["layers.0.blocks.1.attn.relative_position_index"] = ref_relative_index(4).flip(0)
    with pytest.raises(DataFormatError, match="relative_position_index differs"):
        load_reference_backbone(model, sd)
    sd = make_reference_state(cfg)
    sd["layers.0.blocks.0.attn_mask"] = ref_mask(16, 4, 2)  # an unshifted block has no mask
    with pytest.raises(DataFormatError, match="attn_mask differs"):
        load_reference_backbone(model, sd)


def test_load_from_file_and_file_errors(tmp_path):
    cfg = CONFIGS["micro"]
    sd = {"module." + k: v for k, v in make_reference_state(cfg).items()}
    path = tmp_path / "backbone.pt"
    torch.save(sd, path)
    model = build_swinface(cfg)
    report = load_reference_backbone(model, path)
    assert any("module." in note for note in report.notes)
    assert torch.equal(model.trunk.norm.weight, sd["module.norm.weight"])
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_reference_backbone(model, tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DataFormatError, match="garbage.pt"):
        load_reference_backbone(model, garbage)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(DataFormatError, match="expected a state dict"):
        load_reference_backbone(model, listed)


def _multitask_checkpoint(cfg, seed=0):
    source = build_swinface_multitask(cfg)
    backbone_sd = make_reference_state(cfg, seed)
    load_reference_backbone(source.backbone, backbone_sd)
    with torch.no_grad():
        for p in source.om.parameters():
            p.normal_()
    checkpoint = {
        "state_dict_backbone": backbone_sd,
        "state_dict_fam": source.fam.state_dict(),
        "state_dict_tss": source.tss.state_dict(),
        "state_dict_om": source.om.state_dict(),
        "state_dict_softmax_fc": {"weight": torch.randn(10, cfg.embedding_size)},
    }
    return source.eval(), checkpoint


def test_multitask_checkpoint_loads_all_parts(tmp_path):
    cfg = CONFIGS["micro"]
    source, checkpoint = _multitask_checkpoint(cfg)
    path = tmp_path / "swinface.pt"
    torch.save(checkpoint, path)
    target = build_swinface_multitask(cfg)
    report = load_reference_multitask(target, path)
    assert torch.equal(report.margin_weight, checkpoint["state_dict_softmax_fc"]["weight"])
    assert report.loaded == len(target.state_dict())
    target.eval()
    img = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        expected, got = source(img), target(img)
        assert rel_err(got.embedding, ref_forward(checkpoint["state_dict_backbone"], cfg, img)[2]) <= 1e-5
    for a, b in zip(got.outputs, expected.outputs):
        assert torch.allclose(a, b, atol=1e-6)


def test_multitask_head_keys_by_order_and_missing_parts():
    cfg = CONFIGS["micro"]
    _, checkpoint = _multitask_checkpoint(cfg)
    checkpoint["state_dict_fam"] = {"branch_" + k: v for k, v in checkpoint["state_dict_fam"].items()}
    with pytest.raises(DataFormatError, match="head_key_matching='order'"):
        load_reference_multitask(build_swinface_multitask(cfg), checkpoint)
    target = build_swinface_multitask(cfg)
    report = load_reference_multitask(target, checkpoint, head_key_matching="order")
    assert any("matched" in note for note in report.notes)
    first_conv = target.fam[0].convs[0].weight
    assert torch.equal(first_conv, checkpoint["state_dict_fam"]["branch_0.convs.0.weight"])

    del checkpoint["state_dict_om"]
    with pytest.raises(DataFormatError, match="lacks state_dict_om"):
        load_reference_multitask(build_swinface_multitask(cfg), checkpoint, head_key_matching="order")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_is_inferred_from_reference_shapes(name):
    cfg = CONFIGS[name]
    inferred = infer_reference_config(make_reference_state(cfg), drop_path_rate=cfg.drop_path_rate)
    assert inferred == cfg


def test_build_reference_backbone_from_multitask_file(tmp_path):
    cfg = CONFIGS["micro"]
    _, checkpoint = _multitask_checkpoint(cfg, seed=3)
    path = tmp_path / "mt.pt"
    torch.save(checkpoint, path)
    model, report = build_reference_backbone(path, drop_path_rate=0.0)
    assert model.config == cfg and report.missing == []
    img = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(model.eval()(img), ref_forward(checkpoint["state_dict_backbone"], cfg, img)[2]) <= 1e-5
    assert math.isclose(model.config.mlp_ratio, 4.0)
