"""``hinton_kd``: logit distillation (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural
Network", NIPS workshop 2015), adapted to margin-softmax face models.

Face models have no logits of their own, so both are defined through the teacher's trained classifier
W_t (K × E, from the ``header`` file or the train phase's ``header`` artifact, see
:mod:`corecompress_distill_baselines.header`):

- teacher logits  z_t = s·cos(f_t, W_t)                (f_t = the teacher embedding; no margin);
- student logits  z_s = s·cos(P·f_s, W_s)              (P = the projector or identity), where W_s is
  W_t itself, frozen (default), or — with ``train_head: true`` — a trainable copy of W_t, i.e. the
  student's own classifier started from the teacher's;
- L = L_margin(z_s with the margin on the target, y) + weight · T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)).

The T² factor keeps the gradient scale of the soft term independent of T (Hinton et al., Sec. 2).
With s = 64 the default T = 4 gives the soft distributions an effective scale of 16. The teacher's
embedding size must equal the header's; the student's too unless ``projector: true``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from corecompress.engine.precision import float32_math
from corecompress.engine.components import context_device
from corecompress_facekit.api import (
    DISTILL_DEFAULT_M, LossConfigError, MarginOptions, as_embedding, cosine_matrix, margin_logits, margin_parameters,
    student_embedding_size,
)
from corecompress_distill_baselines.header import header_needs, resolve_teacher_header
from corecompress_distill_baselines.projector import (
    check_width, make_projector, project, teacher_embedding, teacher_embedding_size,
)


@dataclass
class HintonKDOptions(MarginOptions):
    temperature: float = field(default=4.0, metadata={"help": "softmax temperature T of the soft term"})
    weight: float = field(default=1.0, metadata={"help": "weight of T²·KL(teacher ‖ student)"})
    header: str | None = field(default=None, metadata={
        "help": "teacher classifier file (safetensors/torch, classes × embedding); 'class_means' = "
                "built from the teacher's embeddings of the training images; null = the train phase's trained margin head (artifact 'header')"})
    train_head: bool = field(default=False, metadata={
        "help": "student logits from a trainable copy of the teacher classifier (else the frozen one)"})
    projector: bool = field(default=False, metadata={"help": "learn Linear(d_s → d_t) when the sizes differ"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature}")
        if self.weight < 0:
            raise ValueError(f"weight: must be >= 0, got {self.weight}")


class HintonKD(nn.Module):
    """Margin loss on the labels plus temperature-softened KL to the teacher's class distribution."""

    def __init__(self, options: HintonKDOptions) -> None:
        super().__init__()
        self.options = options
        self.m1, self.m2, self.m3 = margin_parameters(options, DISTILL_DEFAULT_M)
        self.projector: nn.Module | None = None
        self.student_head: nn.Parameter | None = None
        self.register_buffer("teacher_header", torch.empty(0, 0), persistent=False)

    def setup(self, ctx: Any) -> None:
        header = resolve_teacher_header(ctx, self.options.header, "hinton_kd")
        teacher_size = teacher_embedding_size(ctx)
        if teacher_size != header.shape[1]:
            raise LossConfigError(f"hinton_kd: teacher embedding size {teacher_size} differs from the teacher "
                                  f"classifier's embedding size {header.shape[1]}")
        self.teacher_header = F.normalize(header, dim=1)
        if self.options.train_head:
            self.student_head = nn.Parameter(header.clone())
        self.projector = make_projector(self.options.projector, student_embedding_size(ctx), teacher_size,
                                        "hinton_kd", ctx)
        self.to(context_device(ctx))

    @float32_math
    def forward(self, outputs: Any, batch: Mapping[str, Any], teacher_outputs: Any = None) -> dict[str, Any]:
        if self.teacher_header.numel() == 0:
            raise RuntimeError("hinton_kd: setup(ctx) must run before the first forward")
        o, labels = self.options, batch["label"].long()
        f_t = teacher_embedding(teacher_outputs, "hinton_kd").float()
        check_width(f_t, self.teacher_header.shape[1], "teacher", "hinton_kd")
        student_centres = self.teacher_header if self.student_head is None else self.student_head
        cos_s = cosine_matrix(project(self.projector, as_embedding(outputs).float()), student_centres)
        cos_t = cosine_matrix(f_t, self.teacher_header)
        margin_loss = F.cross_entropy(margin_logits(cos_s, labels, o.s, self.m1, self.m2, self.m3), labels)
        t = o.temperature
        kd = F.kl_div(F.log_softmax(o.s * cos_s / t, dim=1), F.log_softmax(o.s * cos_t / t, dim=1),
                      log_target=True, reduction="batchmean") * (t * t)
        return {"loss": margin_loss + o.weight * kd, "margin_loss": margin_loss.detach(), "kd": kd.detach()}


def register(register: Any) -> None:
    register("hinton_kd", HintonKD, HintonKDOptions, needs=lambda o: {"teacher"} | header_needs(o.header),
             description="Hinton logit KD via the teacher classifier: margin loss + w·T²·KL")
