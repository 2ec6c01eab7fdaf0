"""The original LFW ``pairs.txt`` (Huang et al., "Labeled Faces in the Wild", 2007).

Layout (the LFW distribution's ``pairs.txt``): a header "<folds> <pairs per class>" (``10 300``), then for
each fold that many "same" lines ``name n1 n2`` followed by that many "different" lines
``name1 n1 name2 n2``. Images are ``lfw/<name>/<name>_<nnnn>.jpg`` (250x250, not aligned).
A one-number header (``pairsDevTrain.txt``: ``1100``) is read as one fold.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from .errors import DataFormatError

__all__ = ["LFWPair", "lfw_image_path", "read_lfw_pairs"]


class LFWPair(NamedTuple):
    """One LFW pair: the two image paths, whether they show the same person, and the fold (0-based)."""

    path1: Path
    path2: Path
    issame: bool
    fold: int


def lfw_image_path(images_root: Path, name: str, number: int) -> Path:
    """``<images_root>/<name>/<name>_<nnnn>.jpg``, LFW's naming (image numbers start at 1)."""
    return images_root / name / f"{name}_{number:04d}.jpg"


def _image_number(token: str, path: Path, line_number: int) -> int:
    try:
        number = int(token)
    except ValueError:
        number = 0
    if number < 1:
        raise DataFormatError(f"{path}: line {line_number}: image number {token!r} is not a positive integer")
    return number


def read_lfw_pairs(
    pairs_path: str | os.PathLike[str],
    images_root: str | os.PathLike[str] | None = None,
    *,
    check_files: bool = False,
) -> list[LFWPair]:
    """Parse ``pairs.txt`` into a list of :class:`LFWPair` in file order.

    ``images_root`` defaults to the ``lfw/`` folder next to ``pairs.txt``. With ``check_files`` every
    image must exist (``FileNotFoundError`` naming the first missing one and its line).
    """
    path = Path(pairs_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: LFW pairs file not found")
    root = Path(images_root) if images_root is not None else path.parent / "lfw"
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataFormatError(f"{path}: empty LFW pairs file")
    header = lines[0].split()
    try:
        numbers = [int(v) for v in header]
        if len(numbers) not in (1, 2) or min(numbers) < 1:
            raise ValueError
    except ValueError:
        raise DataFormatError(
            f"{path}: line 1: expected a header '<folds> <pairs per class>' like '10 300', got {lines[0][:60]!r}"
        ) from None
    folds, per_class = (1, numbers[0]) if len(numbers) == 1 else (numbers[0], numbers[1])
    expected = folds * 2 * per_class
    if len(lines) - 1 != expected:
        raise DataFormatError(
            f"{path}: header announces {folds} folds x {2 * per_class} pairs = {expected} lines, "
            f"found {len(lines) - 1}"
        )

    pairs: list[LFWPair] = []
    for index, line in enumerate(lines[1:]):
        line_number = index + 2
        fold, position = divmod(index, 2 * per_class)
        same = position < per_class
        tokens = line.split()
        if same and len(tokens) == 3:
            name, first, second = tokens
            path1 = lfw_image_path(root, name, _image_number(first, path, line_number))
            path2 = lfw_image_path(root, name, _image_number(second, path, line_number))
        elif not same and len(tokens) == 4:
            name1, first, name2, second = tokens
            path1 = lfw_image_path(root, name1, _image_number(first, path, line_number))
            path2 = lfw_image_path(root, name2, _image_number(second, path, line_number))
        else:
            kind = "'name n1 n2' (same person)" if same else "'name1 n1 name2 n2' (different people)"
            raise DataFormatError(
                f"{path}: line {line_number}: fold {fold + 1} expects {kind} here, got {line.strip()[:80]!r}"
            )
        if check_files:
            for image_path in (path1, path2):
                if not image_path.is_file():
                    raise FileNotFoundError(f"{image_path}: LFW image not found (from {path} line {line_number})")
        pairs.append(LFWPair(path1, path2, same, fold))
    return pairs
