"""ONNX export of a (physically pruned) model, and a check of the file against PyTorch.

onnx and onnxruntime are the optional extra ``onnx`` and are imported only here. The TorchScript
exporter (``dynamo=False``) is used: it needs no ``onnxscript`` and handles the pruned models'
``GatheredLinear`` (``index_select`` → ONNX ``Gather``) and timm's Swin window code.
"""
from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import torch

from corecompress.errors import UserError

ONNX_EXTRA = "ONNX export needs the optional 'onnx' extra: pip install 'corecompress[onnx]'"


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a model without either)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def export_onnx(model: torch.nn.Module, input_size: tuple[int, ...], path: Path, opset: int = 17) -> Path:
    """Write ``model`` to ``path`` with a dynamic batch dimension (input ``image``, output ``output``)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UserError(ONNX_EXTRA) from None
    model = model.eval()
    example = torch.zeros(2, *input_size, device=model_device(model))  # batch 2: a batch of 1 can be specialised away by tracing
    with warnings.catch_warnings():  # the exporter's deprecation and tracer notes are not the user's business
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=["output"],
                              dynamic_axes={"image": {0: "batch"}, "output": {0: "batch"}}, opset_version=opset,
                              dynamo=False)
    return Path(path)


def onnx_relative_error(model: torch.nn.Module, path: Path, input_size: tuple[int, ...], batch: int = 3,
                        seed: int = 0) -> float | None:
    """max |onnxruntime − PyTorch| / max |PyTorch| on a seeded random batch; None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *input_size, generator=gen)
    with torch.no_grad():  # the same input wherever the model is; compared on the CPU
        expected = model.eval()(x.to(model_device(model))).cpu()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    if got.shape != expected.shape:
        return float("inf")
    scale = float(expected.abs().max().clamp_min(1e-12))
    return float((got - expected).abs().max()) / scale
