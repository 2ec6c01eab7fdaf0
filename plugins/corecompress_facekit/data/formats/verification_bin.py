"""insightface verification pair files (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ``calfw.bin`` ...).

A ``.bin`` is a pickle of ``(bins, issame_list)``: ``bins`` holds 2N encoded images (JPEG bytes, or
uint8 numpy arrays of those bytes), pair i is ``(bins[2i], bins[2i+1])``, ``issame_list`` N booleans
(the insightface project's format). These files come from the internet, so they are read with
:func:`~.safe_pickle.restricted_loads` and never with the plain unpickler.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._images import DECODE_WORKERS, decode_image_bytes, encode_image
from .errors import DataFormatError
from .safe_pickle import NUMPY_BYTE_ARRAYS, ForbiddenPickleError, restricted_loads

__all__ = ["VerificationPairs", "load_verification_bin", "write_verification_bin"]


class VerificationPairs:
    """N image pairs with a same/different flag; images stay encoded until asked for.

    ``len(pairs)`` is N; ``pairs[i] -> (image_a, image_b, issame)`` with uint8 HxWx3 RGB images.
    The encoded bytes are held in memory (no file handle), so workers and pickling are safe.
    """

    decode_workers = DECODE_WORKERS

    def __init__(self, encoded_images: Sequence[bytes], issame: np.ndarray, source: str = "<memory>") -> None:
        if len(encoded_images) != 2 * len(issame):
            raise DataFormatError(f"{source}: {len(encoded_images)} images for {len(issame)} pairs (need 2 per pair)")
        self.encoded_images = list(encoded_images)
        self.issame = np.asarray(issame, dtype=bool)
        self.source = source

    def __len__(self) -> int:
        return int(self.issame.size)

    def image(self, index: int) -> np.ndarray:
        """Decode image ``index`` (0 .. 2N-1) to uint8 HxWx3 RGB."""
        return decode_image_bytes(self.encoded_images[index], f"{self.source}: image {index}")

    def __getitem__(self, pair: int) -> tuple[np.ndarray, np.ndarray, bool]:
        if pair < 0:
            pair += len(self)
        if not 0 <= pair < len(self):
            raise IndexError(f"pair {pair} out of range for {len(self)} pairs")
        return self.image(2 * pair), self.image(2 * pair + 1), bool(self.issame[pair])

    def decode_all(self) -> np.ndarray:
        """All 2N images as one uint8 (2N, H, W, 3) array (they must share a size)."""
        images = [self.image(i) for i in range(len(self.encoded_images))]
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            raise DataFormatError(f"{self.source}: images have different sizes {sorted(shapes)[:3]}")
        return np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)


def _as_image_bytes(item: object, index: int, source: str) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    raise DataFormatError(f"{source}: bins[{index}] is {type(item).__name__}, expected encoded image bytes")


def _as_bool(item: object, index: int, source: str) -> bool:
    if isinstance(item, (bool, np.bool_)) or (isinstance(item, (int, np.integer)) and item in (0, 1)):
        return bool(item)
    raise DataFormatError(f"{source}: issame_list[{index}] is {item!r}, expected a boolean")


def load_verification_bin(path: str | os.PathLike[str]) -> VerificationPairs:
    """Read a ``.bin`` pair file safely; a forbidden global or any malformation is a ``DataFormatError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: verification .bin file not found")
    try:
        loaded = restricted_loads(path.read_bytes(), NUMPY_BYTE_ARRAYS)
    except ForbiddenPickleError as exc:
        raise DataFormatError(f"{path}: unsafe pickle refused: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, LookupError,
            MemoryError, OverflowError, RecursionError) as exc:  # MemoryError: a length field of 2^60 bytes
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DataFormatError(f"{path}: not a readable pickle of (bins, issame_list): {detail}") from None
    if not isinstance(loaded, (tuple, list)) or len(loaded) != 2:
        raise DataFormatError(f"{path}: expected a pickled pair (bins, issame_list), got {type(loaded).__name__}")
    bins, issame_list = loaded
    if not isinstance(bins, (list, tuple)):
        raise DataFormatError(f"{path}: bins is {type(bins).__name__}, expected a list of encoded images")
    if isinstance(issame_list, np.ndarray) and issame_list.dtype != object:
        issame_list = issame_list.tolist()
    if not isinstance(issame_list, (list, tuple)):
        raise DataFormatError(f"{path}: issame_list is {type(issame_list).__name__}, expected a list of booleans")
    images = [_as_image_bytes(item, i, str(path)) for i, item in enumerate(bins)]
    issame = np.array([_as_bool(item, i, str(path)) for i, item in enumerate(issame_list)], dtype=bool)
    return VerificationPairs(images, issame, source=str(path))


def write_verification_bin(
    path: str | os.PathLike[str],
    images: Sequence[np.ndarray | bytes],
    issame: Sequence[bool],
    *,
    image_format: str = "JPEG",
    quality: int = 95,
) -> Path:
    """Write ``(bins, issame_list)`` as insightface does: 2N encoded images (arrays are encoded with
    ``image_format``; bytes are kept) and N Python booleans, pickled with protocol 4."""
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs (need 2 per pair)")
    bins = [bytes(im) if isinstance(im, (bytes, bytearray)) else encode_image(im, image_format, quality) for im in images]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump((bins, [bool(v) for v in issame]), handle, protocol=4)
    return path
