"""The Olivetti / AT&T "ORL" faces (Samaria & Harter, 1994; credit "AT&T Laboratories Cambridge").

``olivettifaces.mat`` (MAT 5.0, the file scikit-learn's ``fetch_olivetti_faces`` downloads) holds
``faces``: uint8 4096x400, one image per column stored column-major, so image i is
``faces.T.reshape(400, 64, 64).transpose(0, 2, 1)[i]``.
40 people x 10 images: identity = i // 10. Grey values 0-242. Free for research; never committed into
the project -- read from a path (tests use ../shared/data/olivetti/).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .errors import DataFormatError

__all__ = ["OLIVETTI_SHA256", "load_olivetti"]

#: sha256 of the known olivettifaces.mat (the 40 x 10 AT&T faces the tests and benchmarks use).
OLIVETTI_SHA256 = "b1988d02c72fe5b8ee82b5ef3bb7982eafc74f1e1ff0ae0ade35061ad0af534d"


def load_olivetti(
    path: str | os.PathLike[str], *, sha256: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return (uint8 (400, 64, 64) upright grey faces, int64 (400,) identities 0..39).

    ``sha256``: when given (e.g. :data:`OLIVETTI_SHA256`), the file must have that digest.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Olivetti faces file (olivettifaces.mat) not found")
    if sha256 is not None:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != sha256.lower():
            raise DataFormatError(f"{path}: sha256 {digest} does not match the expected {sha256}")
    try:
        from scipy.io import loadmat
    except ImportError as exc:
        raise ImportError("reading olivettifaces.mat needs scipy: pip install scipy") from exc
    try:
        contents = loadmat(path)
    except (ValueError, TypeError, OSError, NotImplementedError) as exc:
        raise DataFormatError(f"{path}: not a readable MAT file ({exc})") from None
    if "faces" not in contents:
        raise DataFormatError(f"{path}: no 'faces' variable (found {sorted(k for k in contents if not k.startswith('__'))})")
    faces = np.asarray(contents["faces"])
    if faces.shape != (4096, 400):
        raise DataFormatError(f"{path}: 'faces' has shape {faces.shape}, expected (4096, 400)")
    if faces.dtype != np.uint8:
        if faces.min() < 0 or faces.max() > 255 or not np.array_equal(faces, np.round(faces)):
            raise DataFormatError(f"{path}: 'faces' values are not 8-bit grey levels")
        faces = faces.astype(np.uint8)
    images = np.ascontiguousarray(faces.T.reshape(400, 64, 64).transpose(0, 2, 1))
    labels = np.arange(400, dtype=np.int64) // 10
    return images, labels
