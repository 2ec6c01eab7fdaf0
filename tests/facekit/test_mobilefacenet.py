"""MobileFaceNet: paper layer configuration, size/compute figures, GDC head, small CPU variant."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from corecompress_facekit.models.mobilefacenet import (Bottleneck, MobileFaceNet, mobilefacenet,
                                                    mobilefacenet_small)


def _params_and_macs(model: torch.nn.Module, size: int) -> tuple[int, int]:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


def test_parameters_and_macs_match_the_adadistill_student():
    params, macs = _params_and_macs(mobilefacenet(), 112)
    assert abs(params - 1.20e6) < 0.01e6  # AdaDistill: 1.20 M
    assert abs(macs - 0.22e9) < 0.01e9  # AdaDistill: 0.22 GMACs
    # the paper's 128-d version: 0.99 M parameters, 221 M MAdds
    params_128, macs_128 = _params_and_macs(mobilefacenet(embedding_size=128), 112)
    assert params - params_128 == 512 * (512 - 128) + 2 * (512 - 128)  # linear + BN1d
    assert abs(params_128 - 0.99e6) < 0.02e6 and abs(macs_128 - 221e6) < 1e6


def test_layer_configuration_follows_the_paper_table():
    model = mobilefacenet()
    assert model.conv1.conv.stride == (2, 2) and model.conv1.conv.out_channels == 64
    assert model.conv2_dw.conv.groups == 64
    # bottlenecks (t, c, n, s): (2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1)
    assert model.conv_23.conv.conv.out_channels == 128 and model.conv_23.conv_dw.conv.stride == (2, 2)
    assert len(model.conv_3.model) == 4 and len(model.conv_4.model) == 6 and len(model.conv_5.model) == 2
    assert model.conv_34.conv.conv.out_channels == 256 and model.conv_34.project.conv.out_channels == 128
    assert model.conv_45.conv.conv.out_channels == 512 and model.conv_45.conv_dw.conv.stride == (2, 2)
    assert model.conv_4.model[0].conv.conv.out_channels == 256
    assert all(block.residual for block in model.conv_4.model) and not model.conv_34.residual
    gdc = model.conv_6_dw.conv
    assert gdc.kernel_size == (7, 7) and gdc.groups == 512 and gdc.padding == (0, 0)
    assert model.linear.bias is None and model.bn.num_features == 512


def test_gdc_kernel_follows_the_input_size_and_outputs_embeddings():
    model = mobilefacenet_small(embedding_size=128, input_size=64)
    assert model.conv_6_dw.conv.kernel_size == (4, 4)
    assert model.conv1.conv.out_channels == 32  # width 0.5
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 64, 64))
    assert out.shape == (3, 128)
    # a smaller input than configured fails loudly (the 4×4 GDC kernel does not fit a 2×2 map)
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 3, 32, 32))


def test_small_variant_backpropagates_and_residual_adds_input():
    torch.manual_seed(0)
    model = mobilefacenet_small(embedding_size=16, input_size=32, width=0.25, blocks=(1, 1, 1))
    model(torch.randn(4, 3, 32, 32)).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    block = Bottleneck(8, 8, 16, stride=1, residual=True).eval()
    torch.nn.init.zeros_(block.project.bn.weight)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(block(x), x)


def test_invalid_configurations_are_rejected():
    with pytest.raises(ValueError, match="width"):
        MobileFaceNet(width=0)
    with pytest.raises(ValueError, match="residual"):
        Bottleneck(8, 16, 16, stride=1, residual=True)
