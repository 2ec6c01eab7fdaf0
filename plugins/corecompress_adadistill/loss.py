"""``adadistill``: adaptive knowledge distillation inside the margin softmax (Boutros, Štruc, Damer,
"AdaDistill: Adaptive Knowledge Distillation for Deep Face Recognition", ECCV 2024, arXiv 2407.01332).

The student is trained with ArcFace/CosFace (or the combined margin) whose class centres are built
online from the teacher's embeddings (:mod:`corecompress_adadistill.centres`). One step:

1. f_s = normalize(P·student(x)) (P = optional projector), f_t = normalize(teacher(x)) (given by the
   loop or a target, no grad);
2. under no_grad, in training mode only, the centres are updated from (f_s, f_t, y) — gathered from
   every rank under DistributedDataParallel — **before** the logits, so the batch's own teacher
   embeddings are already in the centres its loss uses;
3. cos = normalize(f_s)·normalize(W)ᵀ, margin logits (insightface combined convention, shared with
   the margin heads), cross-entropy. Gradients reach the student (and projector) only.

The centres (K × d_t, the transpose of the paper's W) start N(0, 0.01²) from a generator seeded by
the recipe seed (identical on every rank), are a persistent **buffer** — never a parameter, never
touched by the optimizer — and so are written to checkpoints with the objective's state_dict and
restored by ``load_state_dict`` (the reference code loses them on resume).

Further deviations from the reference code: the ordered duplicate-label update and the rank-
synchronised centres (see :mod:`.centres`); the plain-α variant works; options are validated by name
(the reference's training script passes an option the loss does not accept and crashes at start-up;
here an unknown key is a recipe error naming the closest valid one). Logged: ``alpha`` (mean α′ or α),
``lambda`` (mean λ), ``c`` (mean c), ``ce``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from corecompress.engine.precision import float32_math
from corecompress.engine.components import context_device, seeded_generator
from corecompress_adadistill.centres import adaptive_update, gather_from_ranks
from corecompress_distill_baselines.api import (
    check_width, make_projector, project, teacher_embedding, teacher_embedding_size,
)
from corecompress_facekit.api import (
    DISTILL_DEFAULT_M, MarginOptions, as_embedding, cosine_matrix, margin_logits, margin_parameters,
    student_embedding_size,
)

_CENTRES_SALT = 0xADA
CENTRE_INIT_STD = 0.01


@dataclass
class AdaDistillOptions(MarginOptions):
    """Margin (default ArcFace, m = 0.45, s = 64 — the paper's best) and the centre update variant."""

    variant: Literal["weighted", "plain"] = field(default="weighted", metadata={
        "help": "weighted: α′ = clamp(c·λ, 1e-6, 1) (Eq. 8); plain: α = clamp(c, 0, 1) (Eq. 7)"})
    projector: bool = field(default=False, metadata={
        "help": "learn Linear(d_s → d_t) so a student of another embedding size can be compared to the centres"})


class AdaDistill(nn.Module):
    """Margin-penalty softmax against adaptive, teacher-built class centres (see module docstring)."""

    def __init__(self, options: AdaDistillOptions) -> None:
        super().__init__()
        self.options = options
        self.m1, self.m2, self.m3 = margin_parameters(options, DISTILL_DEFAULT_M)
        self.projector: nn.Module | None = None
        self.register_buffer("centres", torch.empty(0, 0))

    def setup(self, ctx: Any) -> None:
        num_classes = int(ctx.data.num_classes)
        teacher_size = teacher_embedding_size(ctx)
        self.projector = make_projector(self.options.projector, student_embedding_size(ctx), teacher_size,
                                        "adadistill", ctx)
        generator = seeded_generator(ctx, _CENTRES_SALT)
        self.centres = torch.randn(num_classes, teacher_size, generator=generator) * CENTRE_INIT_STD
        self.to(context_device(ctx))

    @float32_math
    def forward(self, outputs: Any, batch: Mapping[str, Any], teacher_outputs: Any = None) -> dict[str, Any]:
        if self.centres.numel() == 0:
            raise RuntimeError("adadistill: setup(ctx) must run before the first forward")
        labels = batch["label"].long()
        f_t = F.normalize(teacher_embedding(teacher_outputs, "adadistill").float(), dim=1)
        check_width(f_t, self.centres.shape[1], "teacher", "adadistill")
        f_s = project(self.projector, as_embedding(outputs).float())
        check_width(f_s, self.centres.shape[1], "student (after the projector)" if self.projector else "student",
                    "adadistill")
        f_s = F.normalize(f_s, dim=1)
        parts: dict[str, Any] = {}
        if self.training:
            with torch.no_grad():
                all_s, all_t, all_y = gather_from_ranks(f_s.detach(), f_t, labels)
                stats = adaptive_update(self.centres, all_s, all_t, all_y, self.options.variant)
            parts = {"alpha": stats.alpha.mean(), "lambda": stats.lam.mean(), "c": stats.c.mean()}
        cos = cosine_matrix(f_s, self.centres)
        logits = margin_logits(cos, labels, self.options.s, self.m1, self.m2, self.m3)
        loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "ce": loss.detach(), **parts}


def register(register: Any) -> None:
    register("adadistill", AdaDistill, AdaDistillOptions, needs={"teacher"},
             description="AdaDistill: margin softmax against adaptive teacher-built class centres (ECCV 2024)")
