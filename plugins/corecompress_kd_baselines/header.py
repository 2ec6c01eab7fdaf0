"""The teacher's trained classifier ("teacher header"), frozen, for ArcDistill/CosDistill and Hinton KD.

Source, in this order: the loss option ``header`` (a safetensors or torch weights file, read with
``weights_only=True``), else ``ctx.state["teacher_header"]`` (a K × E tensor or a module with a
``weight`` such as a margin head — put there by the runner, e.g. the classifier of an earlier
training phase). Neither → a clear error. The matrix is oriented to classes × embedding (an E × K
ArcFace kernel is transposed) and must have one row per class of the training data.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from corecompress_face.losses import LossConfigError, load_header_file, orient_header


def resolve_teacher_header(ctx: Any, path: str | None, method: str) -> Tensor:
    """The frozen teacher classifier as a detached float K × E tensor on the CPU."""
    num_classes = int(ctx.data.num_classes)
    if path is not None:
        return orient_header(load_header_file(path), num_classes, str(path))
    held = (getattr(ctx, "state", None) or {}).get("teacher_header")
    if held is None:
        raise LossConfigError(f"{method} needs the teacher's trained classifier: set the option 'header: <file>' "
                              "(safetensors/torch, classes × embedding) or run it after a phase that leaves "
                              "ctx.state['teacher_header']")
    matrix = held if isinstance(held, Tensor) else getattr(held, "weight", None)
    if not isinstance(matrix, Tensor) or matrix.ndim != 2:
        raise LossConfigError(f"{method}: ctx.state['teacher_header'] is neither a 2-D tensor nor a module "
                              f"with a 2-D weight (got {type(held).__name__})")
    return orient_header(matrix.detach().float().cpu(), num_classes, "ctx.state['teacher_header']")
