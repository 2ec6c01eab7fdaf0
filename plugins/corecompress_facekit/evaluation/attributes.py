"""Binary face-attribute recognition metrics (CelebA's 40 attributes, SwinFace's attribute heads).

Conventions of CelebA attribute recognition (Liu et al., ICCV 2015; as FACES and SwinFace report it):

* prediction = sigmoid(logit) > 0.5, computed as ``logit > 0`` (the same decision in exact
  arithmetic; float32 sigmoid rounds to 0.5 only for |logit| < ~3e-8, where this rule is the exact
  one), or, for 2-way heads (logits shaped ``(N, A, 2)``), the argmax with class 1 = attribute present
  (a tie picks class 0, as ``argmax`` takes the first);
* mean accuracy = correct labels / (N x A) = the mean of the per-attribute accuracies;
* per attribute, the positive class is "attribute present": precision = TP / (TP + FP),
  recall = TP / (TP + FN), F1 = 2PR / (P + R); an undefined ratio (0/0) counts as 0 (scikit-learn's
  ``zero_division=0``). Macro precision / recall / F1 are the unweighted means over attributes
  (macro F1 is the mean of per-attribute F1, not the F1 of macro P and R);
* ``attribute_mask`` restricts every number to the selected attributes (for example the ones a
  synthetic renderer actually controls, or the ones a data set labels).

Labels may be CelebA's -1/1, or 0/1, or booleans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class AttributeResult:
    """Metrics over the evaluated attributes; all values are fractions in [0, 1]."""

    names: tuple[str, ...]
    mean_accuracy: float
    accuracy: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    macro_precision: float
    macro_recall: float
    macro_f1: float
    n_samples: int

    def per_attribute(self) -> dict[str, dict[str, float]]:
        """``{name: {"accuracy", "precision", "recall", "f1"}}`` for reports."""
        return {
            name: {
                "accuracy": float(self.accuracy[k]),
                "precision": float(self.precision[k]),
                "recall": float(self.recall[k]),
                "f1": float(self.f1[k]),
            }
            for k, name in enumerate(self.names)
        }


def predictions_from_logits(logits: np.ndarray) -> np.ndarray:
    """Boolean predictions from ``(N, A)`` sigmoid logits or ``(N, A, 2)`` 2-way softmax logits."""
    logits = np.asarray(logits)
    if logits.ndim == 2:
        return logits > 0
    if logits.ndim == 3 and logits.shape[2] == 2:
        return np.argmax(logits, axis=2) == 1
    raise ValueError(f"logits must be (N, A) or (N, A, 2), got shape {logits.shape}")


def labels_to_bool(labels: np.ndarray) -> np.ndarray:
    """Map -1/1, 0/1 or boolean labels to booleans (True = attribute present)."""
    labels = np.asarray(labels)
    if labels.dtype == np.bool_:
        return labels
    values = set(np.unique(labels).tolist())
    if values <= {-1, 1} or values <= {0, 1}:
        return labels == 1
    raise ValueError(f"attribute labels must be -1/1, 0/1 or boolean, found values {sorted(values)[:5]}")


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator with 0/0 defined as 0."""
    return np.divide(numerator, denominator, out=np.zeros(numerator.shape), where=denominator > 0)


def evaluate_attribute_predictions(
    predictions: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str] | None = None,
    attribute_mask: np.ndarray | None = None,
) -> AttributeResult:
    """Metrics of boolean ``predictions`` (N, A) against ``labels`` (N, A); see the module docstring."""
    predictions = np.asarray(predictions, dtype=bool)
    labels = labels_to_bool(labels)
    if predictions.ndim != 2 or predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must both be (N, A)")
    n_samples, n_attributes = labels.shape
    if n_samples == 0:
        raise ValueError("no samples to evaluate")
    names = tuple(names) if names is not None else tuple(f"attr_{k}" for k in range(n_attributes))
    if len(names) != n_attributes:
        raise ValueError(f"{len(names)} attribute names for {n_attributes} attributes")
    if attribute_mask is not None:
        attribute_mask = np.asarray(attribute_mask, dtype=bool).ravel()
        if attribute_mask.size != n_attributes:
            raise ValueError(f"attribute_mask has {attribute_mask.size} entries for {n_attributes} attributes")
        if not attribute_mask.any():
            raise ValueError("attribute_mask selects no attribute")
        predictions, labels = predictions[:, attribute_mask], labels[:, attribute_mask]
        names = tuple(name for name, keep in zip(names, attribute_mask) if keep)
    true_pos = np.sum(predictions & labels, axis=0)
    false_pos = np.sum(predictions & ~labels, axis=0)
    false_neg = np.sum(~predictions & labels, axis=0)
    accuracy = np.mean(predictions == labels, axis=0)
    precision = _ratio(true_pos, true_pos + false_pos)
    recall = _ratio(true_pos, true_pos + false_neg)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return AttributeResult(
        names=names,
        mean_accuracy=float(np.mean(predictions == labels)),
        accuracy=accuracy,
        precision=precision,
        recall=recall,
        f1=f1,
        macro_precision=float(np.mean(precision)),
        macro_recall=float(np.mean(recall)),
        macro_f1=float(np.mean(f1)),
        n_samples=int(n_samples),
    )


def evaluate_attributes(
    logits: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str] | None = None,
    attribute_mask: np.ndarray | None = None,
) -> AttributeResult:
    """Metrics from raw logits (``(N, A)`` sigmoid or ``(N, A, 2)`` softmax heads)."""
    return evaluate_attribute_predictions(predictions_from_logits(logits), labels, names, attribute_mask)
