"""The optional Torch-Pruning reference (corecompress_prune_baselines.torch_pruning_reference).

Tests that need the library skip when ``torch_pruning`` is not installed; the missing-library error is
tested either way.
"""
from __future__ import annotations

import sys
import warnings

import pytest
import torch

from corecompress.errors import UserError
from corecompress.plugin.loading import load_plugins
from corecompress.testing.contracts import check_importance, fake_context
from corecompress_builtin.tiny_models import TinyCNN, TinyViT

from corecompress_prune_baselines.torch_pruning_reference import (TPMagnitudeImportance, TPMagnitudeOptions,
                                                            torch_pruning_prune)


def test_missing_library_is_a_one_line_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)      # makes `import torch_pruning` fail
    model = TinyViT(num_outputs=5)
    with pytest.raises(UserError, match=r"pip install 'corecompress\[torch-pruning\]'") as info:
        TPMagnitudeImportance(TPMagnitudeOptions()).score(model, model.prunable_groups(), fake_context())
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="not installed"):
        torch_pruning_prune(model, torch.zeros(1, 3, 16, 16), 0.5)


@pytest.fixture
def tp():
    module = pytest.importorskip("torch_pruning")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)     # "Unwrapped parameters detected: ['pos']"
        yield module


def test_tp_magnitude_contract(tp):
    check_importance(load_plugins().registry.get("importance", "tp_magnitude"))


def test_tp_magnitude_is_the_mean_of_coupled_squared_norms(tp):
    """Torch-Pruning's group L2 (p=2, mean over coupled layers, bias excluded): for an MLP neuron
    ½(‖fc1 row‖² + ‖fc2 column‖²); for a CNN filter ⅓(‖conv1 filter‖² + γ² + ‖conv2 input slice‖²)."""
    torch.manual_seed(0)
    vit = TinyViT(num_outputs=5).eval()
    scores = TPMagnitudeImportance(TPMagnitudeOptions()).score(vit, vit.prunable_groups(), fake_context())
    assert set(scores) == {"blocks.0.mlp_hidden", "blocks.1.mlp_hidden"}   # heads and channels are declined
    mlp = vit.blocks[1].mlp
    expected = (mlp.fc1.weight.pow(2).sum(1) + mlp.fc2.weight.pow(2).sum(0)).detach() / 2
    assert torch.allclose(scores["blocks.1.mlp_hidden"], expected, rtol=1e-5)
    cnn = TinyCNN(num_outputs=5).eval()
    scores = TPMagnitudeImportance(TPMagnitudeOptions()).score(cnn, cnn.prunable_groups(), fake_context())
    b = cnn.blocks[0]
    expected = (b.conv1.weight.pow(2).sum((1, 2, 3)) + b.bn1.weight.pow(2) + b.conv2.weight.pow(2).sum((0, 2, 3))) / 3
    assert torch.allclose(scores["blocks.0.inner"], expected.detach(), rtol=1e-5)


def test_torch_pruning_prune_removes_heads_and_neurons_of_a_vit(tp):
    torch.manual_seed(0)
    model = TinyViT(num_outputs=5, dim=32, num_heads=4, mlp_ratio=2).eval()
    before = sum(p.numel() for p in model.parameters())
    x = torch.randn(2, 3, 16, 16)
    out = torch_pruning_prune(model, x[:1], 0.5)
    assert out is model
    for block in model.blocks:
        attn = block.attn
        assert attn.num_heads == 2 and attn.head_dim == 8                     # whole heads removed, num_heads updated
        assert attn.qkv.weight.shape == (3 * 2 * 8, 32) and attn.proj.weight.shape == (32, 16)
        assert block.mlp.fc1.weight.shape == (64 // 2, 32)                    # neurons halved
        assert block.norm1.weight.shape == (32,)                              # residual width kept (residual=False)
    # exactly the removed rows/columns of 2 blocks: heads 2·(3·8·32 + 3·8 + 32·8), neurons 32·(32 + 1 + 32)
    assert before - sum(p.numel() for p in model.parameters()) == 2 * (2 * 1048 + 32 * 65)
    y = model(x)
    assert y.shape == (2, 5)
    y.sum().backward()
