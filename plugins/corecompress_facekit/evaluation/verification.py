"""LFW-style 10-fold face verification (LFW, CFP-FP/FF, AgeDB-30, CALFW, CPLFW).

Implements the LFW 10-fold protocol (Huang et al., 2007) as insightface's ``eval/verification.py``
computes it, which the FACES and AdaDistill papers report; written anew from its description:

1. embedding of an image = embedding(image) + embedding(flipped image), then L2-normalised (a zero
   vector stays zero, as ``sklearn.preprocessing.normalize`` leaves it);
2. distance of a pair = squared Euclidean distance of the normalised embeddings, ``sum((e1 - e2)**2)``;
3. 10 consecutive folds, no shuffling. With N not divisible by 10 the first ``N % 10`` folds hold one
   pair more -- what scikit-learn's ``KFold(shuffle=False)`` (used by insightface) and
   ``np.array_split`` both do;
4. per fold, the threshold on ``np.arange(0, 4, 0.01)`` with the best accuracy on the other nine folds
   (a pair is "same" when ``distance < threshold``; ties go to the smallest threshold, as ``np.argmax``);
   accuracy on the held-out fold; mean and population std (``np.std``) over folds, in %;
5. VAL@FAR (default FAR = 1e-3), insightface's ``calculate_val``: on the grid ``np.arange(0, 4, 0.001)``
   compute the FAR of the nine training folds at each threshold; if the largest FAR reaches the target,
   the threshold is the piecewise-linear interpolation of threshold against FAR at the target (see
   :func:`threshold_at_far`), else 0; VAL and FAR are then measured on the held-out fold;
6. the mean L2 norm of the raw embeddings (images and flips counted separately), insightface's "XNorm".

The grids are evaluated as one broadcast (pairs x thresholds) comparison, then summed per fold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACCURACY_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)


@dataclass(frozen=True)
class VerificationResult:
    """Outcome of the 10-fold protocol. Percentages are in %, FARs are fractions."""

    accuracy_mean_pct: float
    accuracy_std_pct: float
    fold_accuracies_pct: np.ndarray
    fold_thresholds: np.ndarray
    val_mean_pct: float
    val_std_pct: float
    far_mean: float
    far_target: float
    fold_vals_pct: np.ndarray
    fold_fars: np.ndarray
    fold_val_thresholds: np.ndarray
    fold_sizes: tuple[int, ...]
    mean_norm: float | None
    n_pairs: int


def fold_sizes(n_pairs: int, n_folds: int = 10) -> tuple[int, ...]:
    """Sizes of the consecutive folds: the first ``n_pairs % n_folds`` folds get one extra pair."""
    if n_folds < 2 or n_pairs < n_folds:
        raise ValueError(f"cannot split {n_pairs} pairs into {n_folds} folds (need n_folds >= 2 and >= 1 pair each)")
    base, extra = divmod(n_pairs, n_folds)
    return tuple(base + 1 if k < extra else base for k in range(n_folds))


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)


def pair_distances(
    embeddings: np.ndarray, flipped_embeddings: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Squared distances of pairs ``(embeddings[2i], embeddings[2i+1])`` and the mean raw norm.

    Rows are interleaved as in the insightface ``.bin`` files. With ``flipped_embeddings`` (same
    shape) the two are summed before normalisation; the mean norm covers both sets of rows.
    """
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] % 2:
        raise ValueError(f"embeddings must be (2N, D) with pairs interleaved, got shape {embeddings.shape}")
    raw = [embeddings]
    if flipped_embeddings is not None:
        flipped_embeddings = np.asarray(flipped_embeddings)
        if flipped_embeddings.shape != embeddings.shape:
            raise ValueError(
                f"flipped_embeddings shape {flipped_embeddings.shape} differs from embeddings {embeddings.shape}"
            )
        raw.append(flipped_embeddings)
    mean_norm = float(np.mean(np.concatenate([np.linalg.norm(r, axis=1) for r in raw])))
    unit = _normalize_rows(embeddings + flipped_embeddings if flipped_embeddings is not None else embeddings)
    diff = unit[0::2] - unit[1::2]
    return np.sum(np.square(diff), axis=1), mean_norm


def threshold_at_far(fars: np.ndarray, thresholds: np.ndarray, far_target: float) -> float:
    """Threshold whose training FAR is ``far_target``, as insightface's ``calculate_val`` picks it.

    insightface calls ``scipy.interpolate.interp1d(fars, thresholds, kind='slinear')(far_target)``
    when ``max(fars) >= far_target`` and uses 0 otherwise. ``fars`` is non-decreasing with many
    repeats; SciPy versions of that time accepted the repeats and evaluated a degree-1 B-spline with
    knots ``[f0, f0, ..., fn, fn]`` (current SciPy refuses repeated x). Its value, reproduced here:

    * between two distinct FAR values: linear between the *last* threshold of the lower value and the
      *first* threshold of the higher one; exactly at a repeated interior value: its last threshold;
    * exactly at the largest FAR: the last threshold, unless that FAR is repeated, where the
      degenerate last knot interval makes the B-spline evaluate to 0.
    A NaN ``max(fars)`` (no impostor pairs) counts as not reaching the target.
    """
    fars = np.asarray(fars, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if not np.max(fars) >= far_target:
        return 0.0
    lower = int(np.searchsorted(fars, far_target, side="right")) - 1
    if lower == fars.size - 1:
        return 0.0 if fars.size > 1 and fars[-2] == fars[-1] else float(thresholds[-1])
    upper = lower + 1
    scale = 1.0 / (fars[upper] - fars[lower])
    return float(
        thresholds[lower] * ((fars[upper] - far_target) * scale)
        + thresholds[upper] * ((far_target - fars[lower]) * scale)
    )


def _per_fold_counts(flags: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sum a (pairs x thresholds) boolean array over each consecutive fold -> (folds x thresholds)."""
    return np.add.reduceat(flags, starts, axis=0, dtype=np.int64)


def evaluate_distances(
    distances: np.ndarray,
    issame: np.ndarray,
    n_folds: int = 10,
    far_target: float = 1e-3,
    mean_norm: float | None = None,
) -> VerificationResult:
    """Run the k-fold protocol (module docstring) on precomputed pair distances."""
    dist = np.asarray(distances).ravel()
    if not np.issubdtype(dist.dtype, np.floating):
        dist = dist.astype(np.float64)
    # Compare in the distances' precision: NumPy 1.x (insightface's era) cast the float64 threshold
    # scalar to float32 when the distances were float32; this reproduces its decisions exactly.
    accuracy_grid = ACCURACY_THRESHOLDS.astype(dist.dtype)
    val_grid = VAL_THRESHOLDS.astype(dist.dtype)
    same = np.asarray(issame).ravel().astype(bool)
    if dist.shape != same.shape:
        raise ValueError(f"{dist.size} distances but {same.size} same/different flags")
    sizes = np.asarray(fold_sizes(dist.size, n_folds))
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    fold_of_pair = np.repeat(np.arange(n_folds), sizes)

    # accuracy: choose the threshold on the other folds, measure on the held-out fold
    accepted = dist[:, None] < accuracy_grid[None, :]
    correct_per_fold = _per_fold_counts(accepted == same[:, None], starts)
    correct_train = correct_per_fold.sum(axis=0, keepdims=True) - correct_per_fold
    best = np.argmax(correct_train, axis=1)  # same denominator per fold: counts rank like accuracies
    fold_acc = correct_per_fold[np.arange(n_folds), best] / sizes
    thresholds = ACCURACY_THRESHOLDS[best]

    # VAL@FAR: threshold from the training folds' FAR curve, VAL/FAR on the held-out fold
    accepted_val = dist[:, None] < val_grid[None, :]
    false_per_fold = _per_fold_counts(accepted_val & ~same[:, None], starts)
    impostors_per_fold = np.bincount(fold_of_pair, weights=~same, minlength=n_folds)
    genuine_per_fold = sizes - impostors_per_fold
    with np.errstate(invalid="ignore", divide="ignore"):
        far_train = (false_per_fold.sum(axis=0) - false_per_fold) / (
            impostors_per_fold.sum() - impostors_per_fold
        )[:, None]
        val_thresholds = np.array([threshold_at_far(far_train[f], VAL_THRESHOLDS, far_target) for f in range(n_folds)])
        accepted_test = dist < val_thresholds.astype(dist.dtype)[fold_of_pair]
        true_accepts = np.bincount(fold_of_pair, weights=accepted_test & same, minlength=n_folds)
        false_accepts = np.bincount(fold_of_pair, weights=accepted_test & ~same, minlength=n_folds)
        fold_val = true_accepts / genuine_per_fold
        fold_far = false_accepts / impostors_per_fold

    return VerificationResult(
        accuracy_mean_pct=float(np.mean(fold_acc) * 100),
        accuracy_std_pct=float(np.std(fold_acc) * 100),
        fold_accuracies_pct=fold_acc * 100,
        fold_thresholds=thresholds,
        val_mean_pct=float(np.mean(fold_val) * 100),
        val_std_pct=float(np.std(fold_val) * 100),
        far_mean=float(np.mean(fold_far)),
        far_target=far_target,
        fold_vals_pct=fold_val * 100,
        fold_fars=fold_far,
        fold_val_thresholds=val_thresholds,
        fold_sizes=tuple(int(s) for s in sizes),
        mean_norm=mean_norm,
        n_pairs=int(dist.size),
    )


def evaluate_verification(
    embeddings: np.ndarray,
    issame: np.ndarray,
    flipped_embeddings: np.ndarray | None = None,
    n_folds: int = 10,
    far_target: float = 1e-3,
) -> VerificationResult:
    """The full protocol from embeddings: ``embeddings`` (2N, D) interleaved pairs, ``issame`` (N,).

    Pass raw network outputs (and ``flipped_embeddings`` for the flip test) to get the paper's numbers
    and the mean raw norm; ready (already combined) embeddings work too -- they are L2-normalised
    again, which changes nothing, and the reported mean norm is then theirs (about 1).
    """
    distances, mean_norm = pair_distances(embeddings, flipped_embeddings)
    return evaluate_distances(distances, issame, n_folds=n_folds, far_target=far_target, mean_norm=mean_norm)
