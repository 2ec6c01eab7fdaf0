"""Efficiency measurements: hand-computed parameter and MAC counts, timing mechanics, peak memory."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize, prune

from corecompress.tools.measure import (
    compare_throughput,
    count_macs,
    count_nonzero_parameters,
    count_parameters,
    measure_throughput,
    time_interleaved,
    peak_memory,
)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_parameter_counts_trainable_and_shared() -> None:
    layer = nn.Linear(10, 20)
    assert count_parameters(layer) == 220
    layer.bias.requires_grad_(False)
    assert count_parameters(layer, only_trainable=True) == 200
    shared = nn.Linear(4, 4)
    assert count_parameters(nn.Sequential(shared, nn.ReLU(), shared)) == 20  # counted once


def test_nonzero_parameters_plain_pruned_and_parametrized() -> None:
    layer = nn.Linear(10, 20)
    with torch.no_grad():
        layer.weight[:, 3] = 0.0  # one input column: 20 weights
    assert count_nonzero_parameters(layer) == 200
    assert count_parameters(layer) == 220  # a masked model is not smaller

    masked = nn.Linear(10, 20)
    mask = torch.ones(20, 10)
    mask[:, :2] = 0
    prune.custom_from_mask(masked, "weight", mask)  # weight_orig stays dense, weight = orig * mask
    assert count_parameters(masked) == 220
    assert count_nonzero_parameters(masked) == 220 - 40

    class ZeroFirstRow(nn.Module):
        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            keep = torch.ones_like(weight)
            keep[0] = 0
            return weight * keep

    param_masked = nn.Linear(10, 20)
    parametrize.register_parametrization(param_masked, "weight", ZeroFirstRow())
    assert count_nonzero_parameters(nn.Sequential(param_masked)) == 220 - 10


def test_macs_of_linear_and_convolutions_by_hand(capsys: pytest.CaptureFixture[str]) -> None:
    assert count_macs(nn.Linear(10, 20), (10,)) == 200  # 10 x 20, bias not counted
    assert count_macs(nn.Linear(10, 20), example_input=torch.randn(4, 10)) == 800
    # 3 -> 8 channels, 3x3, stride 2, pad 1 on 9x9 -> 5x5 outputs: 8 * 25 * 3 * 9
    assert count_macs(nn.Conv2d(3, 8, 3, stride=2, padding=1), (3, 9, 9)) == 5400
    # grouped: each of 8 outputs sees 4/2 input channels, 6x6 outputs: 8 * 36 * 2 * 9
    assert count_macs(nn.Conv2d(4, 8, 3, padding=1, groups=2), (4, 6, 6)) == 5184
    assert capsys.readouterr().out == ""  # FlopCounterMode(display=False): nothing printed
    with pytest.raises(ValueError, match="exactly one"):
        count_macs(nn.Linear(2, 2))


class TinyAttention(nn.Module):
    """q k^T and attention x v through the fused call: 2 heads, 5 tokens, 4 dims per head."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x.view(1, 5, 2, 4).transpose(1, 2)
        return F.scaled_dot_product_attention(q, q, q)


def test_attention_products_are_counted() -> None:
    # q k^T: 2 heads x 5 x 5 x 4 = 200; attn v: 200 -> 400
    assert count_macs(TinyAttention(), example_input=torch.randn(1, 5, 8)) == 400
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(1, 5, 8)

    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = mha

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.mha(tokens, tokens, tokens, need_weights=False)[0]

    # in projections 3 x 5 x 8 x 8 = 960, out projection 320, attention 400
    fastpath = torch.backends.mha.get_fastpath_enabled()
    assert count_macs(SelfAttention(), example_input=x) == 1680
    assert torch.backends.mha.get_fastpath_enabled() == fastpath


def test_count_macs_restores_training_mode() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    model.train()
    count_macs(model, (4,))
    assert model.training


class Probe(nn.Module):
    """Records the conditions it runs under; optionally sleeps to have a known duration."""

    def __init__(self, name: str, log: list[str], sleep_s: float = 0.0) -> None:
        super().__init__()
        self.name, self.log, self.sleep_s = name, log, sleep_s
        self.layer = nn.Linear(4, 4)
        self.seen: list[tuple[bool, bool, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(self.name)
        self.seen.append((self.training, torch.is_grad_enabled(), torch.get_num_threads()))
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return self.layer(x)


def test_throughput_runs_in_eval_without_grad_at_fixed_threads() -> None:
    log: list[str] = []
    model = Probe("m", log)
    model.train()
    result = measure_throughput(model, (4,), batch_size=8, threads=2, warmup=2, repeats=10)
    assert len(log) == 12  # 2 warm-up + 10 timed
    assert set(model.seen) == {(False, False, 2)}
    assert torch.get_num_threads() == 1 and model.training  # restored
    assert result["repeats"] == 10 and len(result["times_s"]) == 10
    assert result["images_per_s"] == pytest.approx(8 / result["median_s"])
    assert result["threads"] == 2
    with pytest.raises(ValueError, match=">= 10"):
        measure_throughput(model, (4,), repeats=5)


def test_compare_throughput_interleaves_and_reports_speed_ratios() -> None:
    log: list[str] = []
    fast, slow = Probe("fast", log, sleep_s=0.004), Probe("slow", log, sleep_s=0.008)
    result = compare_throughput({"fast": fast, "slow": slow}, (4,), reference="fast", warmup=1, repeats=10)
    timed = log[2:]  # after one warm-up call each
    expected = [name for r in range(10) for name in (["fast", "slow"] if r % 2 == 0 else ["slow", "fast"])]
    assert timed == expected
    assert result["fast"]["speedup"] == 1.0
    assert result["slow"]["speedup"] == pytest.approx(0.5, abs=0.15)
    with pytest.raises(ValueError, match="reference"):
        compare_throughput({"fast": fast}, (4,), reference="dense")



def test_time_interleaved_warms_up_rotates_and_averages_inner_calls() -> None:
    log: list[str] = []
    calls = {name: (lambda name=name: log.append(name)) for name in ("a", "b", "c")}
    times = time_interleaved(calls, warmup=2, repeats=3, inner=2)
    assert log[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up, each in turn
    rounds = [log[6 + 6 * r: 12 + 6 * r] for r in range(3)]
    assert rounds == [["a", "a", "b", "b", "c", "c"], ["b", "b", "c", "c", "a", "a"], ["c", "c", "a", "a", "b", "b"]]
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3, "c": 3}
    sleepy = time_interleaved({"s": lambda: time.sleep(0.002)}, warmup=0, repeats=2, inner=3)["s"]
    assert all(0.002 <= t < 0.05 for t in sleepy)  # per call, not per round of 3
    with pytest.raises(ValueError, match="inner"):
        time_interleaved(calls, warmup=0, repeats=1, inner=0)


class Jittery(nn.Module):
    """Every other call takes ten times as long: a machine busy with something else."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(0.001 if self.calls % 2 else 0.010)
        return x


def test_timings_carry_their_spread_and_a_jittery_one_is_noisy() -> None:
    from corecompress.tools.spread import noisy_label, spread

    assert spread([1.0, 1.0, 1.0]) == 0.0 and spread([2.0]) == 0.0
    assert spread([1.0, 3.0]) == pytest.approx(2 ** 0.5 / 2)  # stdev √2, mean 2
    assert noisy_label(0.854) == "noisy: CV 85 %" and noisy_label(0.2) == "" and noisy_label(None) == ""
    steady = Probe("steady", [], sleep_s=0.004)
    result = compare_throughput({"steady": steady, "jittery": Jittery()}, (4,), reference="steady", warmup=0,
                                repeats=10)
    jittery = result["jittery"]
    assert jittery["cv"] == pytest.approx(spread(jittery["times_s"])) and jittery["cv"] > 0.5 and jittery["noisy"]
    assert jittery["speedup_cv"] == max(jittery["cv"], result["steady"]["cv"])
    assert result["steady"]["cv"] == pytest.approx(spread(result["steady"]["times_s"]))
    assert "cv" in measure_throughput(steady, (4,), repeats=10) and "speedup_cv" not in measure_throughput(
        steady, (4,), repeats=10)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 1000))


def test_inference_peak_memory_is_two_activations() -> None:
    # no grad: the ReLU output is allocated while the first Linear's output is alive, then that one is
    # freed and the second Linear's output joins the ReLU's: peak = 2 activations of 64 x 1000 float32.
    result = peak_memory(_mlp(), (1000,), batch_size=64)
    assert result["peak_bytes"] == 2 * 64 * 1000 * 4
    assert result["model_bytes"] == (2 * (1000 * 1000 + 1000)) * 4


def test_training_step_peak_includes_gradients_and_leaves_the_model_alone() -> None:
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    inference = peak_memory(model, (1000,), batch_size=64)["peak_bytes"]
    plain = peak_memory(model, (1000,), batch_size=64, mode="train")["peak_bytes"]
    adam = peak_memory(
        model, (1000,), batch_size=64, mode="train", optimizer_factory=lambda params: torch.optim.Adam(params)
    )["peak_bytes"]
    gradient_bytes = 2 * (1000 * 1000 + 1000) * 4
    assert plain >= gradient_bytes + inference
    assert adam - plain >= 2 * gradient_bytes  # Adam's two moment buffers
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="mode"):
        peak_memory(model, (1000,), mode="training")


def test_the_run_report_marks_a_noisy_throughput_and_shows_no_spread_rows() -> None:
    from corecompress_builtin.reporters import metrics_table

    table = "\n".join(metrics_table({
        "before": {"efficiency/images_per_s_b1": 8000.0, "efficiency/images_per_s_b1_cv": 0.04},
        "after": {"efficiency/images_per_s_b1": 39.0, "efficiency/images_per_s_b1_cv": 0.85},
    }))
    assert "| efficiency/images_per_s_b1 | 8,000 | 39 (noisy: CV 85 %) |" in table
    assert "_cv" not in table
