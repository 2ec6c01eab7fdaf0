"""Image decoding / encoding helpers shared by the format readers (PIL is imported lazily)."""
from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataFormatError

#: DataLoader workers a reader that decodes images asks for under ``num_workers: auto``
#: (a 112x112 JPEG decodes in about 0.25 ms on one core; 8 workers feed ~30k images/s, more than one
#: GPU trains a face model at); the engine caps it by the CPUs (corecompress.engine.data_loaders).
DECODE_WORKERS = 8


def import_pil() -> Any:
    """Return the ``PIL.Image`` module, or explain how to get it."""
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - pillow is a declared dependency
        raise ImportError("reading face images needs Pillow: pip install pillow") from exc
    return Image


def decode_errors(Image: Any) -> tuple[type[BaseException], ...]:  # noqa: N803 - the PIL module
    """What PIL raises for bytes that are not a decodable image: OSError and SyntaxError mostly, but
    damaged headers also surface as struct/Index/Key/Type/ZeroDivision errors, and a header announcing
    a gigantic picture as ``DecompressionBombError``."""
    return (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError,
            ArithmeticError, Image.DecompressionBombError)


def pil_to_rgb_array(image: Any) -> np.ndarray:
    """Convert a PIL image of any mode (grey, palette, RGBA, CMYK, 16-bit) to uint8 HxWx3 RGB."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def decode_image_bytes(data: bytes | bytearray | memoryview | np.ndarray, where: str) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) to uint8 HxWx3 RGB; ``where`` names it in errors."""
    Image = import_pil()
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if not raw:
        raise DataFormatError(f"{where}: empty image payload")
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            return pil_to_rgb_array(image)
    except decode_errors(Image) as exc:
        raise DataFormatError(f"{where}: payload is not a decodable image ({_one_line(exc)})") from None


def read_image_file(path: Path) -> np.ndarray:
    """Read an image file to uint8 HxWx3 RGB, with one clear error line naming the file."""
    Image = import_pil()
    try:
        with Image.open(path) as image:
            image.load()
            return pil_to_rgb_array(image)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file not found") from None
    except decode_errors(Image) as exc:
        raise DataFormatError(f"{path}: not a decodable image ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return text or type(exc).__name__


def encode_image(image: np.ndarray, image_format: str = "JPEG", quality: int = 95) -> bytes:
    """Encode a uint8 HxWx3 (or HxW grey) array as JPEG or PNG bytes."""
    Image = import_pil()
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 HxW or HxWx3 image, got {array.dtype} {array.shape}")
    buffer = io.BytesIO()
    options = {"quality": quality} if image_format.upper() in ("JPEG", "JPG") else {}
    Image.fromarray(array).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def resize_shorter_then_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size`` (bilinear), then crop the centre ``size``x``size``.

    This is torchvision's ``Resize(size)`` + ``CenterCrop(size)``, the CelebA protocol of
    FACES (178x218 -> 112x137 -> 112x112).
    """
    Image = import_pil()
    height, width = image.shape[:2]
    if (height, width) != (size, size):
        if width <= height:  # same rounding as torchvision.transforms.functional.resize
            new_w, new_h = size, int(size * height / width)
        else:
            new_w, new_h = int(size * width / height), size
        pil = Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR)
        image = np.asarray(pil)
        top = int(round((new_h - size) / 2.0))
        left = int(round((new_w - size) / 2.0))
        image = image[top : top + size, left : left + size]
    return np.ascontiguousarray(image)


def resize_exact(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to ``size``x``size`` (bilinear) when needed; aligned faces need no crop."""
    if image.shape[:2] == (size, size):
        return image
    Image = import_pil()
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR)).copy()
