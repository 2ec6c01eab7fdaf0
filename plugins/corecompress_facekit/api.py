"""The stable public surface of the corecompress_facekit plugin: what other plugins may import.

Other plugins import face-specific helpers from here only, never from facekit's private modules
(``losses``, ``heads``, ``targets``...), which may change; tests/plugin/test_import_boundaries.py checks it.
Margin math: the combined margin of ArcFace (Deng et al., CVPR 2019) / CosFace (Wang et al., CVPR 2018).
Helpers that are not face-specific (seeded generator, context device) are in the core:
:mod:`corecompress.engine.components`.
"""
from __future__ import annotations

from corecompress_facekit.celeba import CELEBA_ATTRIBUTES
from corecompress_facekit.heads.attribute import AttributeHead
from corecompress_facekit.heads.margin import CombinedMarginHead, margin_logits, target_margin
from corecompress_facekit.losses import (
    DISTILL_DEFAULT_M, MARGIN_DEFAULT_M, HeaderFileError, HeaderFileMissing, LossConfigError, MarginKind,
    MarginObjective, MarginObjectiveOptions, MarginOptions, as_embedding, cosine_matrix, load_header_file,
    margin_parameters, objective_options, orient_header, probe_output_size, student_embedding_size,
)
from corecompress_facekit.targets import TeacherCache

__all__ = [
    # margin math and heads
    "CombinedMarginHead", "margin_logits", "target_margin", "cosine_matrix",
    # margin options and the plain margin objective
    "MarginKind", "MarginOptions", "margin_parameters", "MARGIN_DEFAULT_M", "DISTILL_DEFAULT_M",
    "MarginObjective", "MarginObjectiveOptions", "objective_options",
    # embeddings
    "as_embedding", "probe_output_size", "student_embedding_size",
    # classifier (header) files
    "load_header_file", "orient_header",
    # errors
    "LossConfigError", "HeaderFileError", "HeaderFileMissing",
    # teacher targets
    "TeacherCache",
    # attributes
    "AttributeHead", "CELEBA_ATTRIBUTES",
]
