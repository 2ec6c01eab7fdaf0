"""The device the check runs on: what it is, its bf16 peak, and CUDA calls guarded by device type."""
from __future__ import annotations

import platform
from typing import Any, Callable, TypeVar

import torch

T = TypeVar("T")

#: Dense bf16 tensor-core peaks (TFLOP/s) by a part of the name torch reports; the first match wins
#: (so "H100 PCIe" before "H100"). H100 SXM reports as "NVIDIA H100 80GB HBM3".
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("A100", 312.0),
)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def bf16_peak_tflops(name: str) -> float | None:
    """The table's peak for a device name, or None for a device the table does not know."""
    return next((peak for part, peak in BF16_PEAK_TFLOPS if part in name), None)


def describe(device: torch.device, peak_override: float | None) -> dict[str, Any]:
    """Name, software versions and the bf16 peak used for MFU (``peak_override`` wins over the table)."""
    name = device_name(device)
    peak = peak_override if peak_override is not None else bf16_peak_tflops(name)
    info: dict[str, Any] = {
        "device": str(device), "name": name, "torch": torch.__version__, "cuda_build": torch.version.cuda,
        "python": platform.python_version(), "bf16_peak_tflops": peak,
        "peak_source": "--peak-tflops" if peak_override is not None else ("table" if peak else None),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["memory_gib"] = round(props.total_memory / 2**30, 1)
        info["capability"] = f"{props.major}.{props.minor}"
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error, so the next measurement starts clean."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def mfu_pct(flops_per_image: float, images_per_s: float, peak_tflops: float | None) -> float | None:
    """Model-FLOPs utilisation in percent of the peak, or None without a peak."""
    if not peak_tflops:
        return None
    return 100.0 * flops_per_image * images_per_s / (peak_tflops * 1e12)


def attempt(measure: Callable[[], T], device: torch.device) -> T | str:
    """``measure()``, or "OOM" when the device ran out of memory (its cache is released then)."""
    try:
        return measure()
    except torch.cuda.OutOfMemoryError:
        release_memory(device)
        return "OOM"
