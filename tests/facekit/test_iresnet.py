"""IResNet backbones: insightface layout and key names, size/compute figures, small CPU variants."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from corecompress_facekit.models.iresnet import IResNet, iresnet, iresnet50, iresnet_small


@pytest.fixture(scope="module")
def meta_iresnet50() -> IResNet:
    """IResNet-50 on the meta device: shapes and names without allocating or computing."""
    with torch.device("meta"):
        return iresnet50().eval()


def test_iresnet50_parameters_and_macs_match_the_paper_figures(meta_iresnet50):
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        meta_iresnet50(torch.zeros(1, 3, 112, 112))
    params = sum(p.numel() for p in meta_iresnet50.parameters())
    macs = counter.get_total_flops() // 2
    assert abs(params - 43.6e6) < 0.05e6  # AdaDistill: 43.6 M
    assert abs(macs - 6.31e9) < 0.02e9  # AdaDistill: 6.31 GMACs


def test_state_dict_uses_insightface_key_names(meta_iresnet50):
    keys = set(meta_iresnet50.state_dict())
    expected = [
        "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "prelu.weight",
        "layer1.0.bn1.weight", "layer1.0.conv1.weight", "layer1.0.bn2.weight", "layer1.0.prelu.weight",
        "layer1.0.conv2.weight", "layer1.0.bn3.weight", "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.weight", "layer1.0.downsample.1.running_var",
        "layer1.2.conv2.weight", "layer2.3.bn3.bias", "layer3.13.prelu.weight", "layer4.2.conv1.weight",
        "layer4.0.downsample.0.weight", "bn2.weight", "bn2.running_mean",
        "fc.weight", "fc.bias", "features.weight", "features.bias", "features.running_mean",
    ]
    missing = [k for k in expected if k not in keys]
    assert not missing
    # only the first block of each stage changes shape, so only it has a downsample branch
    assert not any(k.startswith("layer1.1.downsample") for k in keys)
    assert "layer3.14.conv1.weight" not in keys and "layer4.3.conv1.weight" not in keys
    # no parameters outside the insightface names
    top_level = {k.split(".")[0] for k in keys}
    assert top_level == {"conv1", "bn1", "prelu", "layer1", "layer2", "layer3", "layer4", "bn2", "fc",
                         "features"}


@pytest.mark.parametrize("depth,layers", [(18, (2, 2, 2, 2)), (50, (3, 4, 14, 3)), (100, (3, 13, 30, 3))])
def test_stage_depths(depth, layers):
    with torch.device("meta"):
        model = iresnet(depth)
    assert tuple(len(getattr(model, f"layer{i}")) for i in range(1, 5)) == layers
    assert model.fc.in_features == 512 * 7 * 7 and model.fc.out_features == 512


def test_block_structure_and_frozen_embedding_scale():
    model = iresnet_small(widths=(8, 16, 24, 32), layers=(2, 1, 1, 1), input_size=32, embedding_size=16)
    block = model.layer1[0]
    assert block.conv2.stride == (2, 2) and block.conv1.stride == (1, 1)  # stride on the second conv
    assert model.layer1[1].downsample is None
    assert not model.features.weight.requires_grad and torch.all(model.features.weight == 1)
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())


@pytest.mark.parametrize("input_size,spatial", [(112, 7), (64, 4), (50, 4), (48, 3)])
def test_fc_input_follows_the_input_size(input_size, spatial):
    model = iresnet_small(widths=(8, 8, 8, 8), input_size=input_size, embedding_size=10).eval()
    assert model.fc.in_features == 8 * spatial * spatial
    with torch.no_grad():
        out = model(torch.randn(2, 3, input_size, input_size))
    assert out.shape == (2, 10)


def test_small_variant_trains_and_residuals_carry_the_input():
    torch.manual_seed(0)
    model = iresnet_small(widths=(8, 16, 16, 16), input_size=32, embedding_size=12)
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in model.parameters() if p.requires_grad)
    # with the residual branch silenced (bn3 scale 0) a non-downsampling block is the identity
    block = model.layer1[0].__class__(8, 8)
    torch.nn.init.zeros_(block.bn3.weight)
    block.eval()
    y = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(block(y), y)


def test_invalid_configurations_are_rejected():
    with pytest.raises(ValueError, match="depth 42"):
        iresnet(42)
    with pytest.raises(ValueError, match="4 stages"):
        IResNet((1, 1, 1), (8, 8, 8, 8))
