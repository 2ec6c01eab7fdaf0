"""Face image transforms: uint8 HxWx3 numpy images in, float32 CHW torch tensors out (or, for the
training loader, uint8 Nx3xHxW batches that :func:`normalize_uint8_batch` normalises on the device).

Conventions of face recognition / FACES (Lajić et al., ICT Express 2026): inputs normalised as
(x/255 - 0.5)/0.5 to [-1, 1] at 112x112; training with random horizontal flip (recognition) or with
RandAugment ``rand-m9-mstd0.5-inc1`` + colour jitter 0.4 + random erasing 0.25 (attributes, via timm);
evaluation with resize + centre crop.

Randomness: by default the random transforms draw from torch's global generator, which DataLoader
seeds differently in every worker (a numpy generator built here would be copied into every worker and
give all workers the same flips). Pass a ``torch.Generator`` for reproducible draws in one process.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "CenterCropResize",
    "Compose",
    "GreyToRGB",
    "NormalizeToTensor",
    "RandomHorizontalFlip",
    "Resize",
    "build_eval_transform",
    "build_train_transform",
    "normalize_batch",
    "normalize_to_tensor",
    "normalize_uint8_batch",
    "uint8_batch",
]

FACE_MEAN = 0.5
FACE_STD = 0.5
RANDAUGMENT_CONFIG = "rand-m9-mstd0.5-inc1"


def _pil_image_module() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - pillow is a declared dependency
        raise ImportError("face image transforms need Pillow: pip install pillow") from exc
    return Image


def _check_uint8_image(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {array.dtype} {array.shape}")
    return array


def _normalize_in_place(tensor: torch.Tensor) -> torch.Tensor:
    """float32 values 0..255 -> (x/255 - 0.5)/0.5, in place, in two passes. Bit for bit the same:
    x/127.5 is exactly twice x/255 rounded (127.5 = 255/2 and scaling by 2 commutes with rounding), and
    so is the subtraction of 1 vs 0.5; a test checks all 256 values."""
    return tensor.div_(255.0 * FACE_STD).sub_(FACE_MEAN / FACE_STD)


def normalize_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float32 3xHxW, (x/255 - 0.5)/0.5: exactly -1 for 0 and 1 for 255."""
    array = _check_uint8_image(image)
    if not (array.flags.c_contiguous and array.flags.writeable):
        array = np.array(array, copy=True)  # torch.from_numpy needs a writable, contiguous buffer
    return _normalize_in_place(torch.from_numpy(array).permute(2, 0, 1).to(torch.float32))


def _batch_buffer(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised tensor; in shared memory inside a DataLoader worker, as ``default_collate``
    allocates its batches there (the batch then reaches the main process without another copy)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    template = torch.empty(0, dtype=dtype)
    storage = template._typed_storage()._new_shared(int(np.prod(shape)))
    return template.new(storage).resize_(shape)


def _checked_batch(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The images as uint8 HxWx3 arrays of one size (at least one)."""
    arrays = [_check_uint8_image(image) for image in images]
    if not arrays:
        raise ValueError("a batch needs at least one image")
    shape = arrays[0].shape
    different = next((a.shape for a in arrays if a.shape != shape), None)
    if different is not None:
        raise ValueError(f"images of one batch must share a size, got {shape} and {different}")
    return arrays


def normalize_batch(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 images of one size -> float32 Nx3xHxW, equal bit for bit to stacking
    :func:`normalize_to_tensor` of each, built in one buffer (no per-image tensors, no stacking copy)."""
    arrays = _checked_batch(images)
    height, width = arrays[0].shape[:2]
    batch = _batch_buffer((len(arrays), 3, height, width))
    batch.copy_(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))
    return _normalize_in_place(batch)


def uint8_batch(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 images of one size -> a contiguous uint8 Nx3xHxW batch, un-normalised (a quarter
    of the float batch's bytes); :func:`normalize_uint8_batch` of it equals :func:`normalize_batch`
    of the images bit for bit (tested on the CPU; on CUDA by the same ops, not tested here)."""
    arrays = _checked_batch(images)
    height, width = arrays[0].shape[:2]
    batch = _batch_buffer((len(arrays), 3, height, width), torch.uint8)
    for row, array in zip(batch, arrays):  # one image at a time: no stacked copy of the batch
        row.copy_(torch.from_numpy(array).permute(2, 0, 1))
    return batch


def normalize_uint8_batch(batch: torch.Tensor) -> torch.Tensor:
    """A uint8 Nx3xHxW batch (on any device) -> float32 (x/255 - 0.5)/0.5, contiguous, on the same device:
    the float ops of :func:`normalize_batch` in its order (exact uint8 -> float, x/127.5, then - 1).

    The divisor is a 0-dim tensor on the batch's device: CUDA's kernel divides by a Python number as a
    multiplication by its reciprocal (which may lose one bit), by a device tensor as a true division, as
    the CPU does for both."""
    if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected a uint8 Nx3xHxW batch, got {batch.dtype} {tuple(batch.shape)}")
    images = batch.to(torch.float32, memory_format=torch.contiguous_format)
    divisor = torch.full((), 255.0 * FACE_STD, dtype=torch.float32, device=batch.device)
    return images.div_(divisor).sub_(FACE_MEAN / FACE_STD)


class NormalizeToTensor:
    """Callable form of :func:`normalize_to_tensor` (the last step of every face pipeline)."""

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return normalize_to_tensor(image)


class GreyToRGB:
    """HxW or HxWx1 grey -> HxWx3 by repeating the channel; HxWx3 passes; RGBA drops alpha."""

    def __call__(self, image: np.ndarray) -> np.ndarray:
        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {array.dtype}")
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
            raise ValueError(f"expected HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}")
        if array.shape[2] == 1:
            return np.repeat(array, 3, axis=2)
        return np.ascontiguousarray(array[:, :, :3])


class Resize:
    """Resize to ``size``x``size`` (bilinear); for already aligned faces, which need no crop."""

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        array = _check_uint8_image(image)
        if array.shape[:2] == (self.size, self.size):
            return array
        Image = _pil_image_module()
        return np.asarray(Image.fromarray(array).resize((self.size, self.size), Image.BILINEAR)).copy()


class CenterCropResize:
    """Resize the shorter side to ``size`` then crop the centre (torchvision Resize + CenterCrop)."""

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        array = _check_uint8_image(image)
        height, width = array.shape[:2]
        if (height, width) == (self.size, self.size):
            return array
        Image = _pil_image_module()
        if width <= height:
            new_w, new_h = self.size, int(self.size * height / width)
        else:
            new_w, new_h = int(self.size * width / height), self.size
        resized = np.asarray(Image.fromarray(array).resize((new_w, new_h), Image.BILINEAR))
        top = int(round((new_h - self.size) / 2.0))
        left = int(round((new_w - self.size) / 2.0))
        return np.ascontiguousarray(resized[top : top + self.size, left : left + self.size])


class RandomHorizontalFlip:
    """Mirror the image left-right with probability ``p`` (faces are left-right symmetric)."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if torch.rand((), generator=self.generator).item() < self.p:
            return np.ascontiguousarray(np.asarray(image)[:, ::-1])
        return image


class Compose:
    """Apply callables in order."""

    def __init__(self, steps: Sequence[Callable[[Any], Any]]) -> None:
        self.steps = list(steps)

    def __call__(self, image: Any) -> Any:
        for step in self.steps:
            image = step(image)
        return image

    def __repr__(self) -> str:
        return f"Compose({[type(step).__name__ for step in self.steps]})"


class _PILStep:
    """Run a PIL-image transform (timm RandAugment, torchvision ColorJitter) on a uint8 array."""

    def __init__(self, transform: Callable[[Any], Any]) -> None:
        self.transform = transform

    def __call__(self, image: np.ndarray) -> np.ndarray:
        Image = _pil_image_module()
        return np.asarray(self.transform(Image.fromarray(_check_uint8_image(image))), dtype=np.uint8).copy()

    def __repr__(self) -> str:
        return f"_PILStep({self.transform!r})"


def _randaugment_steps(image_size: int, color_jitter: float, erase_probability: float) -> tuple[list, list]:
    """RandAugment + colour jitter (on images) and random erasing (on the normalised tensor).

    Hyper-parameters as timm's ``create_transform`` sets them: translate 45 % of the size, fill with
    the mean grey (128), bicubic. Unlike ``create_transform`` (which silently drops colour jitter when
    RandAugment is on), colour jitter is applied, as the FACES reference code lists it; set it to 0 to drop it.
    Erasing fills with per-pixel normal noise (``mode='pixel'``, the Swin/DeiT recipe's choice).
    """
    try:
        from PIL import Image
        from timm.data.auto_augment import rand_augment_transform
        from timm.data.random_erasing import RandomErasing
        from torchvision.transforms import ColorJitter
    except ImportError as exc:
        raise ImportError("the 'randaugment' face transform needs timm and torchvision: pip install timm") from exc
    fill = round(255 * FACE_MEAN)
    hparams = {"translate_const": int(image_size * 0.45), "img_mean": (fill, fill, fill), "interpolation": Image.BICUBIC}
    image_steps: list = [_PILStep(rand_augment_transform(RANDAUGMENT_CONFIG, hparams))]
    if color_jitter > 0:
        image_steps.append(_PILStep(ColorJitter(color_jitter, color_jitter, color_jitter)))
    tensor_steps: list = []
    if erase_probability > 0:
        tensor_steps.append(RandomErasing(probability=erase_probability, mode="pixel", max_count=1, device="cpu"))
    return image_steps, tensor_steps


def build_train_transform(
    kind: str = "flip",
    image_size: int = 112,
    *,
    generator: torch.Generator | None = None,
    color_jitter: float = 0.4,
    erase_probability: float = 0.25,
) -> Compose:
    """Training pipeline: uint8 image (grey or RGB) -> float32 3 x image_size x image_size in [-1, 1].

    ``kind='flip'``: resize + random horizontal flip (recognition, FACES). ``kind='randaugment'``:
    resize + RandAugment ``rand-m9-mstd0.5-inc1`` + colour jitter + random erasing (attributes,
    FACES); its timm/torchvision steps draw from the global RNGs, ``generator`` seeds only the flip.
    """
    steps: list[Callable[[Any], Any]] = [GreyToRGB(), Resize(image_size)]
    if kind == "flip":
        steps += [RandomHorizontalFlip(0.5, generator), NormalizeToTensor()]
    elif kind == "randaugment":
        image_steps, tensor_steps = _randaugment_steps(image_size, color_jitter, erase_probability)
        steps += image_steps + [NormalizeToTensor()] + tensor_steps
    else:
        raise ValueError(f"unknown train transform {kind!r}; choose 'flip' or 'randaugment'")
    return Compose(steps)


def build_eval_transform(image_size: int = 112) -> Compose:
    """Evaluation pipeline: grey -> RGB, resize shorter side + centre crop, normalise to [-1, 1]."""
    return Compose([GreyToRGB(), CenterCropResize(image_size), NormalizeToTensor()])
