"""Face evaluation protocols of the corecompress_facekit built-in plugin.

* :mod:`.verification` -- LFW-style 10-fold accuracy and VAL@FAR (insightface protocol);
* :mod:`.roc` -- ROC, AUC, EER, TAR@FAR on any scored pair list, all pairs of a labelled set;
* :mod:`.ijb` -- IJB-B/C template aggregation, metadata readers, TAR@FAR;
* :mod:`.attributes` -- binary attribute accuracy and macro precision / recall / F1.

Conventions: those of the insightface evaluation scripts that face-recognition papers report (LFW-style
verification, IJB-B/C) and of CelebA attribute recognition. NumPy only (SciPy is not needed).
"""

from __future__ import annotations

from .attributes import AttributeResult, evaluate_attribute_predictions, evaluate_attributes
from .ijb import DataFormatError, evaluate_ijb, read_template_media, read_template_pairs, template_features
from .roc import RocResult, TarAtFar, all_pairs, evaluate_roc, pair_scores, roc_curve, tar_at_far
from .verification import VerificationResult, evaluate_distances, evaluate_verification, pair_distances

__all__ = [
    "AttributeResult",
    "DataFormatError",
    "RocResult",
    "TarAtFar",
    "VerificationResult",
    "all_pairs",
    "evaluate_attribute_predictions",
    "evaluate_attributes",
    "evaluate_distances",
    "evaluate_ijb",
    "evaluate_roc",
    "evaluate_verification",
    "pair_distances",
    "pair_scores",
    "read_template_media",
    "read_template_pairs",
    "roc_curve",
    "tar_at_far",
    "template_features",
]
