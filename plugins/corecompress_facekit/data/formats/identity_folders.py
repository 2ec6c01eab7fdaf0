"""Identity folders ``root/<identity>/<image>``: the simplest face-recognition training set.

The label of an image is the index of its identity folder in sorted (Python string) order, as
torchvision's ``ImageFolder`` does. Hidden entries (names
starting with ".") and plain files directly in ``root`` (a README, a licence) are ignored; an empty
identity folder, a nested folder or a file that is not an image is an error naming it, because
silently skipping it would shift labels or drop an identity.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._images import DECODE_WORKERS, read_image_file, resize_exact
from .errors import DataFormatError

__all__ = ["IMAGE_EXTENSIONS", "IdentityFolderDataset", "scan_identity_folders"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff"})


def scan_identity_folders(root: str | os.PathLike[str]) -> tuple[list[str], list[tuple[Path, int]]]:
    """Return (identity names in label order, [(image path, label)]) without opening any image."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: identity-folder root not found")
    identities = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not identities:
        raise DataFormatError(f"{root}: no identity folders (expected root/<identity>/<image>)")
    samples: list[tuple[Path, int]] = []
    for label, identity in enumerate(identities):
        folder = root / identity
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        for entry in entries:
            if entry.is_dir():
                raise DataFormatError(f"{entry}: nested folder inside identity {identity!r} (expected images only)")
            if entry.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataFormatError(f"{entry}: not an image file (extension {entry.suffix or 'none'!r})")
            samples.append((entry, label))
        if not entries:
            raise DataFormatError(f"{folder}: identity folder is empty")
    return identities, samples


class IdentityFolderDataset:
    """``dataset[i] -> (uint8 HxWx3 RGB image, int label)`` from ``root/<identity>/<image>``.

    Images are decoded with PIL, converted to RGB (grey and RGBA are fine) and resized to
    ``image_size``x``image_size`` (bilinear) unless ``image_size`` is None; then ``transform`` if given.
    Workers are safe: every read opens (and closes) its own file.
    """

    decode_workers = DECODE_WORKERS

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int | None = 112,
        transform: Callable[[np.ndarray], Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.classes, self.samples = scan_identity_folders(self.root)
        self.image_size = image_size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = read_image_file(path)
        if self.image_size is not None:
            image = resize_exact(image, self.image_size)
        return (self.transform(image) if self.transform is not None else image), label

    @property
    def labels(self) -> np.ndarray:
        """int64 label of every image, without decoding anything."""
        return np.array([label for _, label in self.samples], dtype=np.int64)

    @property
    def num_classes(self) -> int:
        """Number of identity folders."""
        return len(self.classes)
