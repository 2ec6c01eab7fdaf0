"""Precision for the GPU check: recipe keys set in one place, autocast for the hand-written parts."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator

import torch
from torch import nn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_keys(wanted: str) -> tuple[dict[str, str], str]:
    """The top-level recipe keys asking for ``wanted`` — the one place this benchmark sets them — and
    the precision the framework will run. A corecompress without a ``precision`` setting always runs
    fp32: nothing is set then, and "fp32" is returned, so its runs are reported as what they are."""
    from corecompress.config.recipe import Recipe

    if wanted not in DTYPES:
        raise ValueError(f"precision must be one of {', '.join(DTYPES)}, got {wanted!r}")
    if "precision" in {f.name for f in dataclasses.fields(Recipe)}:
        return {"precision": wanted}, wanted
    return {}, "fp32"


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """``torch.autocast`` to ``precision`` on ``device``'s type; fp32 = no autocast at all."""
    with torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "fp32"):
        yield


class Autocast(nn.Module):
    """``model`` called under :func:`autocast` (so a plain inference timer measures mixed precision)."""

    def __init__(self, model: nn.Module, precision: str) -> None:
        super().__init__()
        self.model, self.precision = model, precision

    def forward(self, x: torch.Tensor) -> Any:
        with autocast(x.device, self.precision):
            return self.model(x)


@contextlib.contextmanager
def observed_dtypes(model: nn.Module) -> Iterator[set[str]]:
    """The dtypes the first convolution or linear layer of ``model`` computed in, while active —
    evidence of the precision a loop really ran, whatever it was asked for."""
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    seen: set[str] = set()
    handle = first.register_forward_hook(lambda _m, _i, out: seen.add(str(out.dtype).removeprefix("torch.")))
    try:
        yield seen
    finally:
        handle.remove()


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """fp32 matmuls and convolutions without TF32 on CUDA for the duration (restored afterwards)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
