"""SwinFace multi-task heads and the 42 -> 40 CelebA mapping (the FACES attribute head: tests/faces_pruner/test_faces.py)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from corecompress_facekit.models.swinface import count_macs
from corecompress_facekit.models.swinface_heads import (
    CELEBA_ATTRIBUTES, NUM_EXPRESSIONS, TASK_GROUPS, TASK_OUTPUTS, ChannelAttentionBranch, ChannelGate,
    build_swinface_multitask, celeba_logits, celeba_output_indices, split_channels,
)

torch.set_num_threads(1)


def test_task_outputs_cover_celeba_exactly_once():
    assert len(TASK_GROUPS) == 11 and len(TASK_OUTPUTS) == 42
    names = [output.name for output in TASK_OUTPUTS]
    assert sorted(set(names) - {"Age", "Expression"}) == sorted(CELEBA_ATTRIBUTES)
    assert len(names) == len(set(names))
    indices = celeba_output_indices()
    assert len(indices) == 40 and len(set(indices)) == 40
    assert [names[i] for i in indices] == list(CELEBA_ATTRIBUTES)
    # hand-derived from the group sizes 1,2,2,6,10,5,2,4,6,2,2 (group starts 0,1,3,5,11,21,26,28,32,38,40)
    by_name = dict(zip(CELEBA_ATTRIBUTES, indices))
    assert by_name["Male"] == 0 and by_name["Young"] == 2 and by_name["Smiling"] == 4
    assert by_name["Attractive"] == 5 and by_name["Bald"] == 11 and by_name["Arched_Eyebrows"] == 21
    assert by_name["5_o_Clock_Shadow"] == 32 and by_name["Wearing_Necktie"] == 41
    widths = {output.name: (output.width, output.kind) for output in TASK_OUTPUTS}
    assert widths["Age"] == (1, "age") and widths["Expression"] == (NUM_EXPRESSIONS, "expression") == (7, "expression")
    assert widths["Male"] == (2, "attribute")
    assert TASK_OUTPUTS[1].group == TASK_OUTPUTS[2].group == 1  # Age and Young share the age branch


def test_celeba_logits_are_log_odds_in_official_order():
    outputs = []
    for index, output in enumerate(TASK_OUTPUTS):
        value = torch.zeros(3, output.width)
        if output.width == 2:
            value[:, 0], value[:, 1] = 1.0, 1.0 + index  # log-odds = index
        outputs.append(value)
    logits = celeba_logits(outputs)
    assert logits.shape == (3, 40)
    assert logits[0].tolist() == [float(i) for i in celeba_output_indices()]
    assert logits[:, CELEBA_ATTRIBUTES.index("Male")].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        celeba_logits(outputs[:40])


def test_split_channels_reproduces_swin_t_and_scales():
    assert split_channels((192, 384, 768, 768), 512) == (47, 93, 186, 186)
    assert split_channels((64, 128, 128), 128) == (26, 51, 51)  # 25.6, 51.2, 51.2 -> largest remainder
    assert sum(split_channels((3, 5, 7), 10)) == 10
    with pytest.raises(ValueError):
        split_channels((4, 4), 1)


def test_swin_t_multitask_size_and_layers():
    with torch.device("meta"):
        model = build_swinface_multitask("swin_t")
    branch = model.fam[0]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.bias) for c in branch.convs] == [
        (192, 47, (3, 3), None), (384, 93, (3, 3), None), (768, 186, (3, 3), None), (768, 186, (3, 3), None)]
    assert (branch.gate.mlp[0].in_features, branch.gate.mlp[0].out_features, branch.gate.mlp[2].out_features) == (512, 32, 512)
    assert branch.norm.num_features == 512
    subnet = model.tss[0].net
    assert [type(m) for m in subnet] == [nn.Linear, nn.ReLU, nn.Dropout] * 2 and subnet[2].p == 0.5
    assert [layer.out_features for layer in model.om.layers] == [o.width for o in TASK_OUTPUTS]
    params = sum(p.numel() for p in model.parameters())
    unused_reference_head = 768 * 512 + 512  # in the reference state dict, not in our model
    assert abs(params + unused_reference_head - 67.8e6) < 0.05e6  # spec: 67.8 M
    macs = count_macs(model, torch.empty(1, 3, 112, 112, device="meta"))
    assert abs(macs - 6.09e9) < 0.02e9  # spec: 6.09 GMACs


def test_micro_multitask_forward_shapes_and_backward():
    model = build_swinface_multitask("micro")
    x = torch.randn(4, 3, 32, 32)
    result = model(x)
    assert result.embedding.shape == (4, 32) and len(result.outputs) == 42
    assert [tuple(o.shape) for o in result.outputs] == [(4, t.width) for t in TASK_OUTPUTS]
    sum(o.sum() for o in result.outputs).backward()
    assert model.fam[10].convs[0].weight.grad.abs().sum() > 0
    assert model.backbone.trunk.patch_embed.proj.weight.grad.abs().sum() > 0
    assert len(celeba_logits(result.outputs)[0]) == 40


def test_channel_gate_hand_computed():
    gate = ChannelGate(2, reduction=2)  # hidden 1
    with torch.no_grad():
        gate.mlp[0].weight.fill_(1.0)
        gate.mlp[0].bias.zero_()
        gate.mlp[2].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        gate.mlp[2].bias.zero_()
    x = torch.tensor([[[[1.0, 3.0]], [[0.0, 2.0]]]])  # (1, 2, 1, 2)
    # avg = (2, 1) -> hidden relu(3) = 3; max = (3, 2) -> hidden 5; sum over paths: (+8, -8)
    expected = x * torch.sigmoid(torch.tensor([8.0, -8.0]))[None, :, None, None]
    assert torch.allclose(gate(x), expected)


def test_attention_branch_hand_computed():
    branch = ChannelAttentionBranch([1, 1], out_channels=2, reduction=2).eval()
    with torch.no_grad():
        for conv in branch.convs:
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = 1.0  # identity 3x3 kernel
        for p in branch.gate.parameters():
            p.zero_()  # gate = sigmoid(0) = 0.5 everywhere
    a = torch.tensor([[[[1.0, -4.0], [2.0, 0.5]]]])
    b = torch.tensor([[[[-1.0, -2.0], [-3.0, -0.5]]]])
    out = branch([a, b])
    eps = branch.norm.eps
    # channel 0: max relu(0.5 * a) = 1.0; channel 1: relu(0.5 * b) is all 0
    assert torch.allclose(out, torch.tensor([[1.0 / math.sqrt(1 + eps), 0.0]]))
