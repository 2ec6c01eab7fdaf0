"""IJB-B / IJB-C 1:1 template verification.

Protocol of IJB-B (Whitelam et al., CVPRW 2017) / IJB-C (Maze et al., ICB 2018) as computed by
insightface's ``eval_ijbc.py``, written anew from its description:

* image features come in already flip-summed (feature(image) + feature(flipped image));
  optionally each is L2-normalised first (``normalize_images``; insightface's default keeps the norm)
  and multiplied by its face-detector score (``detector_scores``; insightface's default does this,
  the scores being the last column of ``*_name_5pts_score.txt``);
* template feature = sum over the template's media of the mean feature of the media's images,
  then L2-normalised (a zero vector stays zero, as ``sklearn.preprocessing.normalize`` leaves it);
* score of a template pair = cosine (dot product of the normalised template features);
* TAR at FAR in {1e-6 ... 1e-1} by :mod:`.roc`; the default rule is insightface's "closest FAR"
  (``rule="closest"``), ``rule="at_most"`` gives the conservative rule instead.

Deviation: a pair naming a template that has no image is an error here; insightface's lookup table
silently maps it to the first template.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .roc import RocResult, TarRule, evaluate_roc

#: FAR targets reported for IJB-B/C: TAR at FAR in {1e-6 ... 1e-1}, as the papers report them.
IJB_FAR_TARGETS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


from corecompress.errors import DataFormatError  # noqa: E402 - shared by every reader


@dataclass(frozen=True)
class TemplateMedia:
    """Rows of ``*_face_tid_mid.txt``: image file name, template id, media id."""

    images: tuple[str, ...]
    templates: np.ndarray
    medias: np.ndarray


@dataclass(frozen=True)
class TemplatePairs:
    """Rows of ``*_template_pair_label.txt``: template 1, template 2, label (1 = same subject)."""

    template1: np.ndarray
    template2: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class LandmarksScores:
    """Rows of ``*_name_5pts_score.txt``: image name, 5 (x, y) landmarks, detector score."""

    images: tuple[str, ...]
    landmarks: np.ndarray
    scores: np.ndarray


def _read_rows(path: str | Path, n_fields: int, description: str) -> list[tuple[int, list[str]]]:
    """Non-blank lines of ``path`` split on any whitespace, each checked to have ``n_fields`` fields."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    rows = []
    with path.open("r", encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != n_fields:
                raise DataFormatError(
                    f"{path}:{line_no}: expected {n_fields} fields ({description}), found {len(fields)}"
                )
            rows.append((line_no, fields))
    if not rows:
        raise DataFormatError(f"{path}: no data lines")
    return rows


def _to_int(path: str | Path, line_no: int, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataFormatError(f"{path}:{line_no}: {what} {text!r} is not an integer") from None


def read_template_media(path: str | Path) -> TemplateMedia:
    """Read ``*_face_tid_mid.txt`` (``image template_id media_id`` per line, any whitespace)."""
    rows = _read_rows(path, 3, "image template_id media_id")
    return TemplateMedia(
        images=tuple(fields[0] for _, fields in rows),
        templates=np.array([_to_int(path, n, f[1], "template id") for n, f in rows], dtype=np.int64),
        medias=np.array([_to_int(path, n, f[2], "media id") for n, f in rows], dtype=np.int64),
    )


def read_template_pairs(path: str | Path) -> TemplatePairs:
    """Read ``*_template_pair_label.txt`` (``t1 t2 label`` per line, label 0 or 1)."""
    rows = _read_rows(path, 3, "template1 template2 label")
    labels = np.array([_to_int(path, n, f[2], "label") for n, f in rows], dtype=np.int64)
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if bad.size:
        raise DataFormatError(f"{path}:{rows[bad[0]][0]}: label must be 0 or 1, found {labels[bad[0]]}")
    return TemplatePairs(
        template1=np.array([_to_int(path, n, f[0], "template id") for n, f in rows], dtype=np.int64),
        template2=np.array([_to_int(path, n, f[1], "template id") for n, f in rows], dtype=np.int64),
        labels=labels.astype(bool),
    )


def read_landmarks_scores(path: str | Path) -> LandmarksScores:
    """Read ``*_name_5pts_score.txt`` (``image x1 y1 ... x5 y5 score`` per line)."""
    rows = _read_rows(path, 12, "image, 10 landmark coordinates, detector score")
    values = np.empty((len(rows), 11), dtype=np.float64)
    for k, (line_no, fields) in enumerate(rows):
        try:
            values[k] = [float(v) for v in fields[1:]]
        except ValueError:
            raise DataFormatError(f"{path}:{line_no}: landmarks and score must be numbers") from None
    return LandmarksScores(
        images=tuple(fields[0] for _, fields in rows),
        landmarks=values[:, :10].reshape(-1, 5, 2),
        scores=values[:, 10],
    )


def template_features(
    features: np.ndarray,
    templates: np.ndarray,
    medias: np.ndarray,
    detector_scores: np.ndarray | None = None,
    normalize_images: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Aggregate image features into L2-normalised template features.

    Returns ``(template_ids, template_features)`` with ids sorted ascending and rows matching them.
    A media id is local to its template (the same media id in two templates is two media items).
    """
    features = np.asarray(features, dtype=np.float64)
    templates = np.asarray(templates).ravel()
    medias = np.asarray(medias).ravel()
    if features.ndim != 2 or not features.shape[0] == templates.size == medias.size:
        raise DataFormatError(
            f"features {features.shape}, templates ({templates.size}) and medias ({medias.size}) do not match"
        )
    if normalize_images:
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        features = features / np.where(norms == 0, 1, norms)
    if detector_scores is not None:
        detector_scores = np.asarray(detector_scores, dtype=np.float64).ravel()
        if detector_scores.size != features.shape[0]:
            raise DataFormatError(f"{detector_scores.size} detector scores for {features.shape[0]} images")
        features = features * detector_scores[:, None]
    template_ids, template_of_image = np.unique(templates, return_inverse=True)
    media_keys, media_of_image = np.unique(np.stack([template_of_image, medias], axis=1), axis=0, return_inverse=True)
    media_of_image = media_of_image.ravel()
    media_sums = np.zeros((len(media_keys), features.shape[1]))
    np.add.at(media_sums, media_of_image, features)
    media_means = media_sums / np.bincount(media_of_image, minlength=len(media_keys))[:, None]
    template_sums = np.zeros((template_ids.size, features.shape[1]))
    np.add.at(template_sums, media_keys[:, 0], media_means)
    norms = np.linalg.norm(template_sums, axis=1, keepdims=True)
    return template_ids, template_sums / np.where(norms == 0, 1, norms)


def template_pair_scores(
    template_ids: np.ndarray, template_feats: np.ndarray, template1: np.ndarray, template2: np.ndarray
) -> np.ndarray:
    """Cosine score of each template pair; ``template_ids`` sorted as :func:`template_features` returns."""
    template_ids = np.asarray(template_ids)

    def rows_of(ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids).ravel()
        rows = np.clip(np.searchsorted(template_ids, ids), 0, template_ids.size - 1)
        missing = np.flatnonzero(template_ids[rows] != ids)
        if missing.size:
            raise DataFormatError(f"template pair list names template {ids[missing[0]]}, which has no image")
        return rows

    return np.einsum("pd,pd->p", template_feats[rows_of(template1)], template_feats[rows_of(template2)])


def evaluate_ijb(
    features: np.ndarray,
    templates: np.ndarray,
    medias: np.ndarray,
    pairs: TemplatePairs,
    detector_scores: np.ndarray | None = None,
    normalize_images: bool = False,
    far_targets: Sequence[float] = IJB_FAR_TARGETS,
    rule: TarRule = "closest",
) -> RocResult:
    """Template aggregation, pair scores and ROC / TAR@FAR for an IJB-B or IJB-C 1:1 protocol."""
    ids, feats = template_features(features, templates, medias, detector_scores, normalize_images)
    scores = template_pair_scores(ids, feats, pairs.template1, pairs.template2)
    return evaluate_roc(scores, pairs.labels, far_targets=far_targets, rule=rule)
