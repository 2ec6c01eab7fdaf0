"""Margin-penalty softmax heads (ArcFace / CosFace / combined): values, stability, monotonicity."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from corecompress_facekit.heads import (ArcFaceHead, CombinedMarginHead, CosFaceHead, margin_logits,
                                     target_margin)


CONFIGS = [  # (m1, m2, m3)
    (1.0, 0.5, 0.0),   # ArcFace
    (1.0, 0.0, 0.35),  # CosFace
    (1.0, 0.3, 0.2),   # combined
    (1.35, 0.25, 0.1),  # multiplicative angular (SphereFace-like) + both
    (0.9, 0.2, 0.0),   # m1 < 1
]


def test_arcface_logits_match_hand_computed_values():
    cos = torch.tensor([[0.6, 0.1, -0.2], [0.3, -0.5, 0.8]])
    labels = torch.tensor([0, 2])
    s, m = 10.0, 0.5
    logits = margin_logits(cos, labels, s=s, m1=1.0, m2=m, m3=0.0)
    # cos(θ + m) = cos θ cos m − sin θ sin m
    t0 = 0.6 * math.cos(m) - 0.8 * math.sin(m)
    t1 = 0.8 * math.cos(m) - 0.6 * math.sin(m)
    expected = torch.tensor([[s * t0, 1.0, -2.0], [3.0, -5.0, s * t1]])
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)


def test_cosface_and_combined_logits_match_hand_computed_values():
    cos = torch.tensor([[0.6, 0.1], [0.3, -0.5]])
    labels = torch.tensor([1, 0])
    cosface = margin_logits(cos, labels, s=2.0, m1=1.0, m2=0.0, m3=0.4)
    torch.testing.assert_close(cosface, torch.tensor([[1.2, 2 * (0.1 - 0.4)], [2 * (0.3 - 0.4), -1.0]]))
    combined = margin_logits(cos, labels, s=2.0, m1=1.0, m2=0.3, m3=0.2)
    sin01 = math.sqrt(1 - 0.01)
    t_first = 0.1 * math.cos(0.3) - sin01 * math.sin(0.3) - 0.2
    t_second = 0.3 * math.cos(0.3) - math.sqrt(1 - 0.09) * math.sin(0.3) - 0.2
    torch.testing.assert_close(combined, torch.tensor([[1.2, 2 * t_first], [2 * t_second, -1.0]]),
                               rtol=0, atol=1e-5)


def test_fallback_beyond_pi_is_the_continuous_shifted_cosine():
    # θ = acos(−0.95) ≈ 2.824 > π − 0.5: value = cos θ − (1 + cos(π − 0.5)) = −0.95 − (1 − cos 0.5)
    value = target_margin(torch.tensor([-0.95], dtype=torch.float64), m1=1.0, m2=0.5, m3=0.0)
    assert value.item() == pytest.approx(-0.95 - (1 - math.cos(0.5)), abs=1e-12)
    # continuity at θ* for every config with a finite θ*
    for m1, m2, m3 in CONFIGS:
        limit = (math.pi - m2) / m1
        if limit >= math.pi:
            continue
        around = torch.cos(torch.tensor([limit - 1e-6, limit + 1e-6], dtype=torch.float64))
        values = target_margin(around, m1, m2, m3)
        assert abs(values[0] - values[1]).item() < 1e-5, (m1, m2, m3)
        assert values[0].item() == pytest.approx(-1 - m3, abs=1e-5)


@pytest.mark.parametrize("m1,m2,m3", CONFIGS)
def test_target_logit_is_monotone_decreasing_in_theta_and_never_above_cos(m1, m2, m3):
    theta = torch.linspace(0, math.pi, 4001, dtype=torch.float64)
    cos = torch.cos(theta)
    values = target_margin(cos, m1, m2, m3)
    assert torch.all(values[1:] - values[:-1] <= 1e-12)
    assert values[0] > values[-1]
    if m1 >= 1.0:  # a penalty: the target logit never exceeds the plain cosine
        assert torch.all(values <= cos + 1e-9)


@pytest.mark.parametrize("m1,m2,m3", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_gradients_are_finite_at_cos_exactly_plus_minus_one(m1, m2, m3, dtype):
    cos = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.5, -1.0, 1.0]], dtype=dtype,
                       requires_grad=True)
    labels = torch.tensor([0, 0, 2])
    logits = margin_logits(cos, labels, s=64.0, m1=m1, m2=m2, m3=m3)
    assert torch.isfinite(logits).all()
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels), cos, retain_graph=True)
    assert torch.isfinite(grad).all()
    (grad_sum,) = torch.autograd.grad(logits.sum(), cos)
    assert torch.isfinite(grad_sum).all()
    non_target = torch.ones_like(grad_sum, dtype=torch.bool)
    non_target[torch.arange(3), labels] = False
    assert torch.all(grad_sum[non_target] == 64.0)  # non-target logits are exactly s·cos


def test_negative_label_means_no_margin_and_bad_inputs_are_rejected():
    cos = torch.tensor([[0.6, 0.1], [0.3, -0.5]])
    logits = margin_logits(cos, torch.tensor([-1, 0]), s=3.0)
    torch.testing.assert_close(logits[0], cos[0] * 3.0)
    assert logits[1, 0].item() < 0.9
    with pytest.raises(ValueError, match="out of range"):
        margin_logits(cos, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="m2"):
        margin_logits(cos, torch.tensor([0, 1]), m2=-0.1)
    with pytest.raises(ValueError, match="expected cos"):
        margin_logits(cos, torch.tensor([0]))


def test_head_normalises_weights_and_embeddings():
    torch.manual_seed(0)
    head = CombinedMarginHead(6, 4, s=8.0, m1=1.0, m2=0.3, m3=0.1)
    emb = torch.randn(5, 6)
    labels = torch.tensor([0, 1, 2, 3, 0])
    reference = head(emb, labels)
    row_scales = torch.tensor([[2.0], [0.5], [3.0], [7.0]])
    scaled = CombinedMarginHead(6, 4, s=8.0, m1=1.0, m2=0.3, m3=0.1,
                                init_weight=head.weight.detach() * row_scales)
    torch.testing.assert_close(scaled(emb * 5.0, labels), reference, rtol=1e-5, atol=1e-5)
    expected_cos = F.normalize(emb, dim=1) @ F.normalize(head.weight.detach(), dim=1).T
    torch.testing.assert_close(head(emb), 8.0 * expected_cos, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reference, margin_logits(expected_cos, labels, 8.0, 1.0, 0.3, 0.1),
                               rtol=1e-5, atol=1e-5)


def test_head_initialises_from_a_given_tensor_in_either_layout():
    header = torch.randn(5, 3)  # classes × embedding
    assert torch.equal(CombinedMarginHead(3, 5, init_weight=header).weight.detach(), header)
    assert torch.equal(CombinedMarginHead(3, 5, init_weight=header.T).weight.detach(), header)
    square = torch.randn(4, 4)
    assert torch.equal(CombinedMarginHead(4, 4, init_weight=square, init_weight_layout="EK").weight.detach(),
                       square.T)
    with pytest.raises(ValueError, match=r"expected \[5, 4\]"):
        CombinedMarginHead(4, 5, init_weight=header)
    random_head = CombinedMarginHead(64, 100)
    assert 0.005 < random_head.weight.std().item() < 0.02


def test_presets_and_training_reduces_loss():
    assert ArcFaceHead(4, 3).m2 == 0.5 and ArcFaceHead(4, 3, m=0.45).m2 == 0.45
    cosface = CosFaceHead(4, 3)
    assert (cosface.m1, cosface.m2, cosface.m3) == (1.0, 0.0, 0.35)
    torch.manual_seed(1)
    centres = F.normalize(torch.randn(3, 8), dim=1)
    labels = torch.arange(3).repeat(10)
    emb = centres[labels] + 0.3 * torch.randn(30, 8)
    head = ArcFaceHead(8, 3, s=16.0, m=0.3)
    losses = []
    for _ in range(15):  # plain gradient descent on the centres (torch.optim's import is slow)
        loss = F.cross_entropy(head(emb, labels), labels)
        (grad,) = torch.autograd.grad(loss, head.weight)
        with torch.no_grad():
            head.weight -= 0.5 * grad
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_head_runs_in_float32_under_autocast():
    head = ArcFaceHead(8, 3)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits = head(torch.randn(2, 8), torch.tensor([0, 1]))
    assert logits.dtype == torch.float32
