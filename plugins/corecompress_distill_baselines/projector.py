"""Embedding sizes of student and teacher, and the optional projector that maps one onto the other.

Distillation losses that compare the student embedding with a teacher embedding or a teacher
classifier need both in one space. When the sizes differ, a ``projector`` (a trainable, bias-free
``Linear(d_s → d_t)``, FitNets-style regressor: Romero et al., "FitNets: Hints for Thin Deep Nets",
ICLR 2015) maps the student embedding into the teacher's space. It belongs to the objective, not to
the model: it is trained with the model, saved in the objective's state_dict and not part of the
exported student (whose own embedding is what evaluation uses).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from corecompress.engine.components import seeded_generator
from corecompress_facekit.api import LossConfigError, as_embedding, probe_output_size

_PROJECTOR_SALT = 0x9B0C


def teacher_embedding_size(ctx: Any) -> int:
    """The teacher's embedding size: its ``embedding_size`` attribute, else one probe forward."""
    teacher = getattr(ctx, "teacher", None)
    if teacher is None:
        raise LossConfigError("this loss needs a teacher; add a 'teacher:' section to the recipe")
    size = getattr(teacher, "embedding_size", None)
    if isinstance(size, int) and size > 0:
        return size
    spec = getattr(ctx, "model_spec", None)
    if getattr(spec, "input_size", None) is None:
        raise LossConfigError("cannot tell the teacher's embedding size: it declares no embedding_size")
    return probe_output_size(teacher, tuple(spec.input_size), getattr(ctx, "device", None))


def make_projector(enabled: bool, student_size: int, teacher_size: int, method: str, ctx: Any) -> nn.Linear | None:
    """A seeded ``Linear(student_size → teacher_size, bias=False)`` if ``enabled``; None otherwise.

    Without a projector the sizes must be equal: a :class:`LossConfigError` names both otherwise.
    The weight starts U(−1/√d_s, 1/√d_s) (PyTorch's Linear default) from a generator seeded by the
    recipe seed, so it is reproducible whatever else consumed the global random stream.
    """
    if not enabled:
        if student_size != teacher_size:
            raise LossConfigError(
                f"{method}: student embedding size {student_size} differs from teacher embedding size "
                f"{teacher_size}; set 'projector: true' to learn a Linear({student_size} → {teacher_size})")
        return None
    projector = nn.Linear(student_size, teacher_size, bias=False)
    bound = 1.0 / math.sqrt(student_size)
    with torch.no_grad():
        weight = torch.rand(teacher_size, student_size, generator=seeded_generator(ctx, _PROJECTOR_SALT))
        projector.weight.copy_(weight * 2 * bound - bound)
    return projector


def project(projector: nn.Module | None, embeddings: Tensor) -> Tensor:
    """``embeddings`` mapped into the teacher's space (unchanged without a projector)."""
    return embeddings if projector is None else projector(embeddings)


def check_width(embeddings: Tensor, expected: int, what: str, method: str) -> None:
    """Fail clearly when a batch's embeddings do not have the size set up for (e.g. a changed teacher)."""
    if embeddings.shape[1] != expected:
        raise LossConfigError(f"{method}: {what} embedding size is {embeddings.shape[1]}, expected {expected}")


def teacher_embedding(teacher_outputs: Any, method: str) -> Tensor:
    """The teacher embedding handed to a loss (by the loop or a target); a clear error when absent."""
    if teacher_outputs is None:
        raise LossConfigError(f"{method}: no teacher embeddings were given to the loss; it needs a teacher")
    return as_embedding(teacher_outputs).detach()
