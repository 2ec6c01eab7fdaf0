"""The teacher's trained classifier ("teacher header"), frozen, for ArcDistill/CosDistill and Hinton KD.

Source, in this order: the loss option ``header`` — a safetensors or torch weights file (read with
``weights_only=True``), or the reserved value ``class_means`` (below) — else
the artifact ``header`` of the train phase (the margin head trained with the model before pruning,
when that model is the teacher; declared as ``needs: artifact:header``). Neither → a one-line error.
The matrix is oriented to classes × embedding (an E × K ArcFace kernel is transposed) and must have
one row per class of the training data.

``header: class_means`` — for a teacher that has **no trained classifier for the student's training
classes** (e.g. a metric-learning teacher such as dlib's face ResNet used on another data set): the
header is built at set-up from the frozen teacher as the L2-normalised class means of its
L2-normalised embeddings of the training images, un-augmented (no flip): row k =
normalize(mean_{i: y_i = k} normalize(f_t(x_i))). The embeddings come from the ``teacher_cache``
target (default options: ``$CORECOMPRESS_CACHE/teacher`` or ``~/.cache/corecompress/teacher``), so a
distillation phase that also uses ``target: teacher_cache`` with the default directory reads the same
file instead of running the teacher again. A dataset declaring ``augmented = True`` is refused, as is a
class without any training image. **Deviation from the papers**: ArcDistill/CosDistill and Hinton KD
(AdaDistill, ECCV 2024, and the works it compares to) use the teacher's header *trained* jointly with
it on the same identities; class means are its natural training-free stand-in for a metric-learning
teacher (nearest-class-mean classifier), not the same thing.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from corecompress_facekit.api import LossConfigError, load_header_file, orient_header

CLASS_MEANS = "class_means"


def class_mean_header(embeddings: Tensor, labels: Tensor, num_classes: int, source: str = "class_means") -> Tensor:
    """K × E: row k = normalize(mean of normalize(embeddings[i]) over the samples with labels[i] == k)."""
    labels = torch.as_tensor(labels).long().reshape(-1)
    if embeddings.ndim != 2 or embeddings.shape[0] != labels.shape[0]:
        raise LossConfigError(f"{source}: {embeddings.shape[0] if embeddings.ndim else 0} embeddings for "
                              f"{labels.shape[0]} labels")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise LossConfigError(f"{source}: labels outside 0..{num_classes - 1}")
    unit = F.normalize(embeddings.detach().double(), dim=1)
    sums = torch.zeros(num_classes, unit.shape[1], dtype=torch.float64).index_add_(0, labels, unit)
    counts = torch.bincount(labels, minlength=num_classes)
    empty = torch.nonzero(counts == 0).flatten()
    if empty.numel():
        raise LossConfigError(f"{source}: class {int(empty[0])} has no training image "
                              f"({empty.numel()} empty class(es)); cannot build its mean")
    return F.normalize(sums / counts.unsqueeze(1).double(), dim=1).float()


def teacher_class_means(ctx: Any, method: str) -> Tensor:
    """The class-mean header of ``ctx.teacher`` on ``ctx.data.train()`` (module docstring)."""
    from corecompress.engine import distributed
    from corecompress_facekit.api import TeacherCache

    teacher = getattr(ctx, "teacher", None)
    if teacher is None:
        raise LossConfigError(f"{method}: header 'class_means' needs a teacher; add a 'teacher:' section")
    dataset = ctx.data.train()
    if getattr(dataset, "augmented", False):
        raise LossConfigError(f"{method}: header 'class_means' needs the un-augmented training images, but "
                              f"dataset {type(dataset).__name__} declares random augmentation")
    cache = TeacherCache()
    distributed.main_first(lambda: cache.prepare(teacher, dataset, ctx))
    labels = torch.tensor([int(dataset[i]["label"]) for i in range(len(dataset))], dtype=torch.long)
    header = class_mean_header(cache.plain.float(), labels, int(ctx.data.num_classes), f"{method}: class_means")
    log = getattr(ctx, "log", None)
    if log is not None:
        log.info("%s: teacher header = class means of %d teacher embeddings over %d classes (not a trained "
                 "header)", method, len(dataset), header.shape[0])
    return header


def resolve_teacher_header(ctx: Any, path: str | None, method: str) -> Tensor:
    """The frozen teacher classifier as a detached float K × E tensor on the CPU."""
    num_classes = int(ctx.data.num_classes)
    if path == CLASS_MEANS:
        return teacher_class_means(ctx, method)
    if path is not None:
        return orient_header(load_header_file(path), num_classes, str(path))
    hint = ("or set the option 'header: <file>' (safetensors/torch, classes × embedding) or 'header: class_means' "
            "(built from the teacher's embeddings of the training images)")
    teacher_section = getattr(ctx.recipe, "teacher", None)
    if teacher_section is not None and getattr(teacher_section, "model", None) is not None:
        raise LossConfigError(f"{method}: with teacher.model the train phase's head is not the teacher's "
                              f"classifier; {hint[3:]}")
    held = ctx.artifacts.require("header", method, phase="train", hint=hint).value
    matrix = held if isinstance(held, Tensor) else getattr(held, "weight", None)
    if not isinstance(matrix, Tensor) or matrix.ndim != 2:
        raise LossConfigError(f"{method}: the artifact 'header' is neither a 2-D tensor nor a module "
                              f"with a 2-D weight (got {type(held).__name__})")
    return orient_header(matrix.detach().float().cpu().clone(), num_classes, "the train phase's header")


def header_needs(header: str | None) -> set[str]:
    """What the ``header`` option makes a loss need: the train phase's ``header`` artifact (null), a
    teacher (``class_means``), or nothing (a file)."""
    if header is None:
        return {"artifact:header"}
    return {"teacher"} if header == CLASS_MEANS else set()
