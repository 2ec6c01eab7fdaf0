"""``feature_mse``: vanilla feature distillation, L = w·mean_i ‖f_s,i − f_t,i‖² (+ the margin loss).

The "vanilla KD" baseline of AdaDistill (Boutros et al., ECCV 2024, Table "ablation"); the
feature-regression idea goes back to FitNets (Romero et al., ICLR 2015). ‖·‖² sums over the
embedding dimensions and the mean runs over the batch. ``normalize: true`` compares the L2-normalised
embeddings instead (then the term is 2 − 2·cos). ``with_margin: true`` (default) adds the
margin-penalty softmax on the labels with a trainable head on the student's own embedding
(ArcFace m = 0.45 by default, AdaDistill's setting). With different embedding sizes set
``projector: true`` (Linear d_s → d_t on the student side of the feature term only).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch.nn.functional as F
from torch import nn

from corecompress.engine.precision import float32_math
from corecompress.engine.components import context_device
from corecompress_facekit.api import (
    DISTILL_DEFAULT_M, MarginObjective, MarginOptions, as_embedding, objective_options, student_embedding_size,
)
from corecompress_distill_baselines.projector import (
    check_width, make_projector, project, teacher_embedding, teacher_embedding_size,
)


@dataclass
class FeatureMSEOptions(MarginOptions):
    weight: float = field(default=1.0, metadata={"help": "weight w of the feature term"})
    with_margin: bool = field(default=True, metadata={"help": "add the margin loss on the labels (trainable head)"})
    normalize: bool = field(default=False, metadata={"help": "compare L2-normalised embeddings"})
    projector: bool = field(default=False, metadata={"help": "learn Linear(d_s → d_t) when the sizes differ"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight < 0:
            raise ValueError(f"weight: must be >= 0, got {self.weight}")


class FeatureMSE(nn.Module):
    """Mean squared embedding distance to the teacher, optionally plus the margin loss."""

    def __init__(self, options: FeatureMSEOptions) -> None:
        super().__init__()
        self.options = options
        self.projector: nn.Module | None = None
        self.margin: MarginObjective | None = None
        self.teacher_size = 0

    def setup(self, ctx: Any) -> None:
        student_size, self.teacher_size = student_embedding_size(ctx), teacher_embedding_size(ctx)
        self.projector = make_projector(self.options.projector, student_size, self.teacher_size, "feature_mse", ctx)
        if self.options.with_margin:
            self.margin = MarginObjective(objective_options(self.options), DISTILL_DEFAULT_M)
            self.margin.setup(ctx)
        self.to(context_device(ctx))

    @float32_math
    def forward(self, outputs: Any, batch: Mapping[str, Any], teacher_outputs: Any = None) -> dict[str, Any]:
        embeddings = as_embedding(outputs)
        f_t = teacher_embedding(teacher_outputs, "feature_mse").float()
        check_width(f_t, self.teacher_size, "teacher", "feature_mse")
        f_s = project(self.projector, embeddings.float())
        if self.options.normalize:
            f_s, f_t = F.normalize(f_s, dim=1), F.normalize(f_t, dim=1)
        mse = (f_s - f_t).pow(2).sum(dim=1).mean()
        loss = self.options.weight * mse
        parts: dict[str, Any] = {"feature_mse": mse.detach()}
        if self.margin is not None:
            margin_loss = self.margin.margin_loss(embeddings, batch["label"])
            loss = loss + margin_loss
            parts["margin_loss"] = margin_loss.detach()
        return {"loss": loss, **parts}


def register(register: Any) -> None:
    register("feature_mse", FeatureMSE, FeatureMSEOptions, needs={"teacher"}, produces={"header"},
             description="vanilla feature KD: w·mean ‖f_s − f_t‖² (+ margin loss)")
