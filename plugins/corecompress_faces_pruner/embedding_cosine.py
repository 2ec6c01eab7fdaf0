"""``embedding_cosine``: the FACES distillation term, L = (1 − λ)·L_margin + λ·(1 − mean_i cos(f_s,i, f_t,i)).

FACES (Lajić et al., "FACES: Facial Analysis with Compressed Efficient Systems", ICT Express 2026;
as in the authors' public reference code): the pruned model is retrained with an
ArcFace head (s = 64, m = 0.5, optionally initialised from the pretrained header: ``init_header``)
and, optionally, this cosine term to the unpruned teacher. Unlike the reference code, the teacher's
weights are really loaded (the runner's ``teacher:`` section; the loss refuses to run without
teacher embeddings). The margin head is trainable and sits on the student's own embedding; the
cosine term compares the (projected, with ``projector: true``) student embedding with the teacher's.
The reference gives no value of λ; the default 0.5 weighs both terms equally — tune it.
Registered by the faces_pruner plugin; margin objective and projector come from the facekit and
distill_baselines plugins' ``api`` modules.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch.nn.functional as F
from torch import nn

from corecompress.engine.components import context_device
from corecompress_distill_baselines.api import (
    check_width, make_projector, project, teacher_embedding, teacher_embedding_size,
)
from corecompress_facekit.api import (
    MARGIN_DEFAULT_M, MarginObjective, MarginObjectiveOptions, as_embedding, objective_options,
    student_embedding_size,
)


@dataclass
class EmbeddingCosineOptions(MarginObjectiveOptions):
    weight: float = field(default=0.5, metadata={"help": "λ in (1 − λ)·L_margin + λ·(1 − mean cos)"})
    projector: bool = field(default=False, metadata={"help": "learn Linear(d_s → d_t) when the sizes differ"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"weight: must be in [0, 1], got {self.weight}")


class EmbeddingCosine(nn.Module):
    """Margin loss with a trainable head, blended with one minus the mean cosine to the teacher."""

    def __init__(self, options: EmbeddingCosineOptions) -> None:
        super().__init__()
        self.options = options
        self.margin = MarginObjective(objective_options(options, options.init_header), MARGIN_DEFAULT_M)
        self.projector: nn.Module | None = None
        self.teacher_size = 0

    def setup(self, ctx: Any) -> None:
        self.teacher_size = teacher_embedding_size(ctx)
        self.projector = make_projector(self.options.projector, student_embedding_size(ctx), self.teacher_size,
                                        "embedding_cosine", ctx)
        self.margin.setup(ctx)
        self.to(context_device(ctx))

    def forward(self, outputs: Any, batch: Mapping[str, Any], teacher_outputs: Any = None) -> dict[str, Any]:
        embeddings = as_embedding(outputs)
        f_t = teacher_embedding(teacher_outputs, "embedding_cosine").float()
        check_width(f_t, self.teacher_size, "teacher", "embedding_cosine")
        f_s = project(self.projector, embeddings.float())
        cosine = F.cosine_similarity(f_s, f_t, dim=1).mean()
        margin_loss = self.margin.margin_loss(embeddings, batch["label"])
        lam = self.options.weight
        loss = (1.0 - lam) * margin_loss + lam * (1.0 - cosine)
        return {"loss": loss, "margin_loss": margin_loss.detach(), "cosine": cosine.detach()}


def register(register: Any) -> None:
    register("embedding_cosine", EmbeddingCosine, EmbeddingCosineOptions, needs={"teacher"}, produces={"header"},
             description="FACES term: (1 − λ)·margin loss + λ·(1 − mean cos(f_s, f_t))")
