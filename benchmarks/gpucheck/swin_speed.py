"""Section (a): SwinFace-T dense vs pruned variants — size, mixed-precision inference and training
speed, ratios vs dense, model-FLOPs utilisation against the device's bf16 peak."""
from __future__ import annotations

import copy
import statistics
from typing import Callable

import torch
from torch import nn

from corecompress.tools import measure
from gpucheck.context import CheckEnv
from gpucheck.device import attempt, mfu_pct
from gpucheck.precision import Autocast, autocast
from gpucheck.report import OOM, Row
from gpucheck.swin_variants import swin_variants

TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (twice the forward's matmuls)


def _train_step(model: nn.Module, images: torch.Tensor, precision: str) -> tuple[Callable[[], None], dict]:
    """One forward + backward + AdamW step under autocast; its last loss kept on the device (no sync)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    last: dict[str, torch.Tensor] = {}

    def step() -> None:
        with autocast(images.device, precision):
            embedding = model(images)
        loss = embedding.float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        last["loss"] = loss.detach()

    return step, last


def _size_rows(models: dict[str, nn.Module], input_size: tuple[int, ...]) -> tuple[list[Row], dict[str, float]]:
    """Parameters and GMACs per image of each model (FlopCounterMode, one forward), vs dense."""
    rows, flops = [], {}
    params = {name: measure.count_parameters(m) for name, m in models.items()}
    macs = {name: measure.count_macs(m, input_size) for name, m in models.items()}
    for name in models:
        flops[name] = 2.0 * macs[name]
        rows.append(Row(name, "parameters", params[name] / 1e6, "M", ratio=params[name] / params["dense"]))
        rows.append(Row(name, "MACs per image", macs[name] / 1e9, "G", ratio=macs[name] / macs["dense"]))
    return rows, flops


def _inference_rows(env: CheckEnv, models: dict[str, nn.Module], flops: dict[str, float],
                    input_size: tuple[int, ...], batch: int) -> list[Row]:
    shapes = env.shapes
    wrapped = {name: Autocast(m, shapes.precision) for name, m in models.items()}
    result = attempt(lambda: measure.compare_throughput(
        wrapped, input_size, batch, reference="dense", warmup=shapes.infer_warmup, repeats=shapes.infer_repeats,
        device=env.device), env.device)
    metric = f"{shapes.precision} inference, batch {batch}"
    if result == OOM:
        return [Row(name, metric, OOM, "images/s") for name in models]
    return [Row(name, metric, t["images_per_s"], "images/s", ratio=t["speedup"],
                mfu_pct=mfu_pct(flops[name], t["images_per_s"], env.peak_tflops)) for name, t in result.items()]


def _training_rows(env: CheckEnv, models: dict[str, nn.Module], flops: dict[str, float],
                   input_size: tuple[int, ...]) -> list[Row]:
    shapes, batch = env.shapes, env.shapes.train_batch
    metric = f"{shapes.precision} training step, batch {batch}"
    images = torch.randn((batch, *input_size), generator=torch.Generator().manual_seed(1)).to(env.device)
    trained = {name: copy.deepcopy(m).train() for name, m in models.items()}
    steps = {name: _train_step(m, images, shapes.precision) for name, m in trained.items()}
    times = attempt(lambda: measure.time_interleaved(
        {name: step for name, (step, _last) in steps.items()}, warmup=shapes.train_warmup,
        repeats=shapes.train_repeats, inner=shapes.train_inner, device=env.device), env.device)
    if times == OOM:
        return [Row(name, metric, OOM, "images/s") for name in models]
    rates = {name: batch / statistics.median(t) for name, t in times.items()}
    rows = []
    for name, (_step, last) in steps.items():
        finite = bool(torch.isfinite(last["loss"]))  # read once, after the timing
        rows.append(Row(name, metric, rates[name] if finite else float("nan"), "images/s",
                        ratio=rates[name] / rates["dense"],
                        mfu_pct=mfu_pct(TRAIN_FLOPS_PER_FORWARD * flops[name], rates[name], env.peak_tflops)))
    return rows


def run(env: CheckEnv) -> tuple[list[Row], list[str]]:
    variants = swin_variants(env.registry, env.shapes.swin_preset, env.shapes.bisect_iterations)
    input_size = tuple(variants.spec.input_size)
    models = {name: copy.deepcopy(m).to(env.device) for name, m in variants.models.items()}
    rows, flops = _size_rows(models, input_size)
    for batch in env.shapes.infer_batches:
        rows += _inference_rows(env, models, flops, input_size, batch)
    rows += _training_rows(env, models, flops, input_size)
    notes = [f"{name}: sparsity {s:.3f}" for name, s in variants.sparsity.items()]
    notes.append(f"SwinFace preset {env.shapes.swin_preset}, input {input_size}; speeds are medians of interleaved "
                 f"runs (inference {env.shapes.infer_repeats} per batch, training {env.shapes.train_repeats} "
                 f"rounds of {env.shapes.train_inner} steps); training FLOPs = {TRAIN_FLOPS_PER_FORWARD} x forward")
    if env.peak_tflops is None:
        notes.append("MFU omitted: the device is not in the bf16 peak table (give --peak-tflops)")
    return rows, notes
