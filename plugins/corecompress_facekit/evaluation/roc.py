"""ROC analysis of similarity scores: curve, AUC, EER and TAR at fixed FAR.

Generic evaluator (ROC curve, AUC, EER, TAR at FAR) for any
list of scored pairs, or all pairs of a labelled set (:func:`all_pairs`). Scores are similarities:
higher means "more likely the same identity"; a pair is accepted when ``score >= threshold``.

Two rules for TAR at a target FAR, chosen by name (a reported number should say which one it used):

* ``"at_most"`` (default) -- the largest TAR among ROC points whose FAR is <= the target. Conservative:
  the reported operating point never exceeds the FAR budget.
* ``"closest"`` -- the rule of the insightface IJB-B/C scripts (``eval_ijbc.py``): on the ROC curve
  as scikit-learn's ``roc_curve`` returns it (collinear intermediate points dropped), take the point
  whose FAR is closest to the target; on a tie, the point with the larger FAR. It may exceed the budget.

A target FAR below ``1 / #impostor pairs`` cannot be measured (the smallest non-zero FAR is one false
accept): such targets are reported with ``reachable=False`` and ``tar = nan`` under both rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

TarRule = Literal["at_most", "closest"]

#: FAR targets of the generic evaluator: TAR at FAR = 1e-1 ... 1e-4.
DEFAULT_FAR_TARGETS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)

# FAR <= target is decided on counts: fps <= target * n_impostor + _COUNT_TOL, so that e.g. 1e-4 * 30000
# (= 3.0000000000000004 in binary floating point) still admits 3 false accepts and no fewer.
_COUNT_TOL = 1e-9

# pair_scores gathers at most this many embedding elements per side at once (~32 MB in float64)
_PAIR_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class RocCurve:
    """ROC points ordered by decreasing threshold (so FAR and TAR are non-decreasing).

    ``thresholds[0]`` is ``+inf`` (nothing accepted: the point (0, 0)); point k accepts every pair
    whose score is >= ``thresholds[k]``. ``false_accepts``/``true_accepts`` are the counts behind it.
    """

    far: np.ndarray
    tar: np.ndarray
    thresholds: np.ndarray
    false_accepts: np.ndarray
    true_accepts: np.ndarray
    n_genuine: int
    n_impostor: int


@dataclass(frozen=True)
class TarAtFar:
    """TAR at one target FAR. ``far`` is the FAR actually achieved at the chosen point."""

    far_target: float
    tar: float
    far: float
    threshold: float
    reachable: bool
    rule: str


@dataclass(frozen=True)
class RocResult:
    """Summary of an ROC evaluation (see :func:`evaluate_roc`)."""

    curve: RocCurve
    auc: float
    eer: float
    eer_threshold: float
    tar_at_far: tuple[TarAtFar, ...]

    @property
    def n_genuine(self) -> int:
        return self.curve.n_genuine

    @property
    def n_impostor(self) -> int:
        return self.curve.n_impostor


def _as_scores_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores ({scores.size}) and labels ({labels.size}) differ in length")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values")
    if labels.dtype != np.bool_:
        if not np.all((labels == 0) | (labels == 1)):
            raise ValueError("labels must be boolean or 0/1 (1 = genuine pair)")
        labels = labels.astype(bool)
    n_genuine = int(labels.sum())
    if n_genuine == 0 or n_genuine == labels.size:
        raise ValueError("an ROC needs at least one genuine and one impostor pair")
    return scores, labels


def roc_curve(scores: np.ndarray, labels: np.ndarray, drop_intermediate: bool = False) -> RocCurve:
    """ROC curve with one point per distinct score (tied scores form one, possibly diagonal, step).

    ``drop_intermediate=True`` removes the points where neither count changes its slope -- the same
    rule as scikit-learn's ``roc_curve`` default, applied before the (0, 0) point is prepended -- so
    that the ``"closest"`` rule sees exactly the points the insightface scripts saw.
    """
    scores, labels = _as_scores_labels(scores, labels)
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    sorted_labels = labels[order]
    # last index of each run of equal scores: a threshold accepts a whole tie group or none of it
    group_ends = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    true_accepts = np.cumsum(sorted_labels, dtype=np.int64)[group_ends]
    false_accepts = (group_ends + 1) - true_accepts
    thresholds = sorted_scores[group_ends]
    if drop_intermediate and true_accepts.size > 2:
        changes = np.logical_or(np.diff(false_accepts, 2), np.diff(true_accepts, 2))
        keep = np.flatnonzero(np.r_[True, changes, True])
        true_accepts, false_accepts, thresholds = true_accepts[keep], false_accepts[keep], thresholds[keep]
    true_accepts = np.r_[0, true_accepts]
    false_accepts = np.r_[0, false_accepts]
    thresholds = np.r_[np.inf, thresholds]
    n_genuine = int(labels.sum())
    n_impostor = int(labels.size - n_genuine)
    return RocCurve(
        far=false_accepts / n_impostor,
        tar=true_accepts / n_genuine,
        thresholds=thresholds,
        false_accepts=false_accepts,
        true_accepts=true_accepts,
        n_genuine=n_genuine,
        n_impostor=n_impostor,
    )


def auc(curve: RocCurve) -> float:
    """Area under the ROC by the trapezoid rule.

    With ties grouped into diagonal steps this equals the Mann-Whitney U statistic
    P(genuine score > impostor score) + 1/2 P(equal).
    """
    return float(np.trapezoid(curve.tar, curve.far))


def equal_error_rate(curve: RocCurve) -> tuple[float, float]:
    """EER and its threshold.

    FAR - FRR (FRR = 1 - TAR) is non-decreasing along the curve. Let k be the first point with
    FAR >= FRR; the EER is where the straight ROC segment from point k-1 to point k crosses FAR = FRR
    (linear interpolation along the segment), and the threshold returned is ``thresholds[k]``.
    """
    frr = 1.0 - curve.tar
    gap = curve.far - frr
    # the sign of FAR - FRR is decided on counts (exact), e.g. 1/3 - (1 - 2/3) is not 0 in floats
    sign = np.sign(curve.false_accepts * curve.n_genuine - (curve.n_genuine - curve.true_accepts) * curve.n_impostor)
    k = int(np.argmax(sign >= 0))  # the last point has FAR 1 > FRR 0; the first FAR 0 < FRR 1
    if sign[k] == 0:
        return float(curve.far[k]), float(curve.thresholds[k])
    step = -gap[k - 1] / (gap[k] - gap[k - 1])
    eer = curve.far[k - 1] + step * (curve.far[k] - curve.far[k - 1])
    return float(eer), float(curve.thresholds[k])


def tar_at_far(curve: RocCurve, far_target: float, rule: TarRule = "at_most") -> TarAtFar:
    """TAR at ``far_target`` by ``rule`` (module docstring); unreachable targets give ``tar = nan``.

    For the ``"closest"`` rule pass a curve built with ``drop_intermediate=True`` to match insightface.
    """
    if not 0.0 < far_target <= 1.0:
        raise ValueError(f"far_target must be in (0, 1], got {far_target}")
    if rule not in ("at_most", "closest"):
        raise ValueError(f"unknown TAR@FAR rule {rule!r}; choose 'at_most' or 'closest'")
    budget = far_target * curve.n_impostor
    if budget < 1.0 - _COUNT_TOL:
        return TarAtFar(far_target, float("nan"), float("nan"), float("nan"), False, rule)
    if rule == "at_most":
        within = np.flatnonzero(curve.false_accepts <= budget + _COUNT_TOL)
        k = int(within[-1])  # TAR is non-decreasing along the curve: the last admissible point is best
    else:
        distance = np.abs(curve.far - far_target)
        k = int(np.flatnonzero(distance == distance.min())[-1])
    return TarAtFar(far_target, float(curve.tar[k]), float(curve.far[k]), float(curve.thresholds[k]), True, rule)


def evaluate_roc(
    scores: np.ndarray,
    labels: np.ndarray,
    far_targets: Sequence[float] = DEFAULT_FAR_TARGETS,
    rule: TarRule = "at_most",
) -> RocResult:
    """ROC curve, AUC, EER and TAR at each of ``far_targets`` (by ``rule``) for scored pairs."""
    curve = roc_curve(scores, labels)
    rule_curve = roc_curve(scores, labels, drop_intermediate=True) if rule == "closest" else curve
    eer, eer_threshold = equal_error_rate(curve)
    points = tuple(tar_at_far(rule_curve, float(target), rule) for target in far_targets)
    return RocResult(curve=curve, auc=auc(curve), eer=eer, eer_threshold=eer_threshold, tar_at_far=points)


def pair_scores(embeddings: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair ``(i, j)`` of rows of ``embeddings``."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    pairs = np.asarray(pairs, dtype=np.int64)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (items x dims), got shape {embeddings.shape}")
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must have shape (P, 2), got {pairs.shape}")
    norms = np.linalg.norm(embeddings, axis=1)
    if np.any(norms == 0):
        raise ValueError(f"embedding {int(np.argmax(norms == 0))} has zero norm: cosine is undefined")
    unit = embeddings / norms[:, None]
    scores = np.empty(len(pairs))
    chunk = max(1, _PAIR_CHUNK_ELEMENTS // max(1, unit.shape[1]))  # bounded memory for many pairs
    for start in range(0, len(pairs), chunk):
        block = pairs[start:start + chunk]
        scores[start:start + chunk] = np.einsum("pd,pd->p", unit[block[:, 0]], unit[block[:, 1]])
    return scores


def _triu_pairs_from_linear(index: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Map linear indices into the row-major strict upper triangle of an n x n matrix to (i, j).

    Row i starts at offset i*(2n - i - 1)/2; the float estimate of i is corrected by one integer step.
    """
    index = np.asarray(index, dtype=np.int64)

    def row_start(row: np.ndarray) -> np.ndarray:
        return row * (2 * n - row - 1) // 2

    i = np.floor((2 * n - 1 - np.sqrt((2 * n - 1) ** 2 - 8.0 * index)) / 2).astype(np.int64)
    i = np.clip(i, 0, n - 2)
    i = np.where(row_start(i) > index, i - 1, i)
    i = np.where(row_start(i + 1) <= index, i + 1, i)
    j = index - row_start(i) + i + 1
    return i, j


def all_pairs(
    labels: np.ndarray,
    max_impostor_pairs: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """All unordered pairs ``i < j`` of a labelled set, as ``(pairs (P, 2), is_genuine (P,))``.

    Every genuine pair (same label) is kept. ``max_impostor_pairs`` caps the impostor pairs by
    sampling that many uniformly without replacement (seeded); the full pair list is never built
    when the cap is small relative to it. Pairs come sorted by (i, j).
    """
    labels = np.asarray(labels).ravel()
    n = labels.size
    if n < 2:
        raise ValueError("all_pairs needs at least two items")
    n_total = n * (n - 1) // 2
    if max_impostor_pairs is not None and max_impostor_pairs < 0:
        raise ValueError("max_impostor_pairs must be >= 0")
    class_sizes = np.unique(labels, return_counts=True)[1].astype(np.int64)
    n_impostor = n_total - int(np.sum(class_sizes * (class_sizes - 1) // 2))
    # sample by rejection only where impostors are plentiful (>= 1/4 of all pairs, so it terminates fast)
    if max_impostor_pairs is None or n_total <= 4 * max_impostor_pairs or 4 * n_impostor < n_total:
        i, j = np.triu_indices(n, k=1)
        genuine = labels[i] == labels[j]
        if max_impostor_pairs is not None and int((~genuine).sum()) > max_impostor_pairs:
            rng = np.random.default_rng(seed)
            impostor_rows = np.flatnonzero(~genuine)
            drop = rng.choice(impostor_rows, impostor_rows.size - max_impostor_pairs, replace=False)
            keep = np.ones(i.size, dtype=bool)
            keep[drop] = False
            i, j, genuine = i[keep], j[keep], genuine[keep]
        return np.stack([i, j], axis=1), genuine
    # Large set: genuine pairs class by class, impostor pairs by rejection sampling of linear indices.
    order = np.argsort(labels, kind="mergesort")
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    genuine_parts = []
    for start, count in zip(starts, counts):
        if count > 1:
            a, b = np.triu_indices(count, k=1)
            members = order[start:start + count]
            genuine_parts.append(np.stack([members[a], members[b]], axis=1))
    genuine_pairs = np.sort(np.concatenate(genuine_parts), axis=1) if genuine_parts else np.zeros((0, 2), np.int64)
    rng = np.random.default_rng(seed)
    chosen = np.zeros(0, dtype=np.int64)
    while chosen.size < max_impostor_pairs:
        draw = rng.integers(0, n_total, size=2 * (max_impostor_pairs - chosen.size) + 16)
        i, j = _triu_pairs_from_linear(draw, n)
        chosen = np.union1d(chosen, draw[labels[i] != labels[j]])
    chosen = rng.choice(chosen, max_impostor_pairs, replace=False) if chosen.size > max_impostor_pairs else chosen
    i, j = _triu_pairs_from_linear(chosen, n)
    pairs = np.concatenate([genuine_pairs, np.stack([i, j], axis=1)]).astype(np.int64)
    genuine = np.r_[np.ones(len(genuine_pairs), bool), np.zeros(i.size, bool)]
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order], genuine[order]
