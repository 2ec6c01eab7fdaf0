"""corecompress_distill_baselines: the distillation baselines of the AdaDistill paper, as loss components.

- ``feature_mse`` — vanilla feature KD, mean ‖f_s − f_t‖² (+ margin loss) (:mod:`.feature_mse`);
- ``arcdistill`` / ``cosdistill`` — margin loss against the teacher's frozen classifier (:mod:`.header_distill`);
- ``hinton_kd`` — Hinton et al. 2015 logit KD through the teacher classifier (:mod:`.hinton`).

All accept ``projector: true`` (a trainable Linear d_s → d_t, :mod:`.projector`) where the student's
and the teacher's embedding sizes differ; without it, different sizes are a clear error. Other plugins
use the projector through :mod:`.api` (the FACES term ``embedding_cosine`` is in corecompress_faces_pruner).
"""
from __future__ import annotations

from typing import Any

from corecompress import hookimpl


@hookimpl
def register_losses(register: Any) -> None:
    from corecompress_distill_baselines import feature_mse, header_distill, hinton

    for module in (feature_mse, header_distill, hinton):
        module.register(register)
