"""ONNX export of a (physically pruned) model; onnx is an optional extra imported only here."""
from __future__ import annotations

from pathlib import Path

import torch

from corecompress.errors import UserError


def export_onnx(model: torch.nn.Module, input_size: tuple[int, ...], path: Path, opset: int = 17) -> Path:
    """Write ``model`` to ``path`` with a dynamic batch dimension."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UserError("ONNX export needs the optional 'onnx' extra: pip install 'corecompress[onnx]'") from None
    model = model.eval()
    example = torch.zeros(1, *input_size)
    torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=["output"],
                      dynamic_axes={"image": {0: "batch"}, "output": {0: "batch"}}, opset_version=opset,
                      dynamo=False)
    return path
