"""``arcdistill`` / ``cosdistill``: the margin loss against the teacher's trained, frozen classifier.

Baselines of AdaDistill (Boutros et al., ECCV 2024, "ArcDistill/CosDistill"): the student is trained
with ArcFace (default m = 0.45) or CosFace (m = 0.35) whose class centres are the teacher's trained
header, kept frozen — so the student is pulled towards the teacher's class centres instead of
learning its own. The header comes from the ``header`` file option or the train phase's ``header`` artifact
(see :mod:`corecompress_distill_baselines.header`). It is a non-persistent buffer (not written to every
checkpoint: it never changes and is reloaded from its source). The teacher network itself is not
run (it needs a teacher only for ``header: class_means``). Different sizes of student embedding and header need
``projector: true``.
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
    DISTILL_DEFAULT_M, MarginKind, MarginOptions, as_embedding, cosine_matrix, margin_logits, margin_parameters,
    student_embedding_size,
)
from corecompress_distill_baselines.header import header_needs, resolve_teacher_header
from corecompress_distill_baselines.projector import make_projector, project


@dataclass
class ArcDistillOptions(MarginOptions):
    header: str | None = field(default=None, metadata={
        "help": "teacher classifier file (safetensors/torch, classes × embedding); 'class_means' = "
                "built from the teacher's embeddings of the training images; null = the train phase's trained margin head (artifact 'header')"})
    projector: bool = field(default=False, metadata={"help": "learn Linear(d_s → d_t) when the sizes differ"})


@dataclass
class CosDistillOptions(ArcDistillOptions):
    margin: MarginKind = field(default="cosface", metadata={
        "help": "arcface: s·cos(θ+m); cosface: s·(cos θ − m); combined: s·(cos(m1·θ+m2) − m3)"})


class HeaderDistill(nn.Module):
    """Margin-penalty softmax of the (projected) student embedding against a frozen teacher header."""

    def __init__(self, options: ArcDistillOptions, method: str = "arcdistill") -> None:
        super().__init__()
        self.options, self.method = options, method
        self.m1, self.m2, self.m3 = margin_parameters(options, DISTILL_DEFAULT_M)
        self.projector: nn.Module | None = None
        self.register_buffer("teacher_header", torch.empty(0, 0), persistent=False)

    def setup(self, ctx: Any) -> None:
        header = resolve_teacher_header(ctx, self.options.header, self.method)
        self.teacher_header = F.normalize(header, dim=1)
        self.projector = make_projector(self.options.projector, student_embedding_size(ctx), header.shape[1],
                                        self.method, ctx)
        self.to(context_device(ctx))

    @float32_math
    def forward(self, outputs: Any, batch: Mapping[str, Any], teacher_outputs: Any = None) -> dict[str, Any]:
        if self.teacher_header.numel() == 0:
            raise RuntimeError(f"{self.method}: setup(ctx) must run before the first forward")
        labels = batch["label"].long()
        cos = cosine_matrix(project(self.projector, as_embedding(outputs).float()), self.teacher_header)
        loss = F.cross_entropy(margin_logits(cos, labels, self.options.s, self.m1, self.m2, self.m3), labels)
        return {"loss": loss, "margin_loss": loss.detach()}


def register(register: Any) -> None:
    register("arcdistill", lambda o: HeaderDistill(o, "arcdistill"), ArcDistillOptions,
             needs=lambda o: header_needs(o.header),
             description="ArcFace against the teacher's frozen classifier (AdaDistill baseline)")
    register("cosdistill", lambda o: HeaderDistill(o, "cosdistill"), CosDistillOptions,
             needs=lambda o: header_needs(o.header),
             description="CosFace against the teacher's frozen classifier (AdaDistill baseline)")
