"""Face transforms: exact normalisation, seeded flips, resize/crop, grey->RGB, train/eval pipelines."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from corecompress_facekit.data.transforms import (
    CenterCropResize,
    GreyToRGB,
    RandomHorizontalFlip,
    Resize,
    build_eval_transform,
    build_train_transform,
    normalize_batch,
    normalize_to_tensor,
)


def ramp_image(height: int = 112, width: int = 112) -> np.ndarray:
    """Columns 0..width-1 get distinct values per channel, so flips and channel order are visible."""
    columns = np.arange(width, dtype=np.int64)
    image = np.stack([columns % 256, (2 * columns) % 256, 255 - columns % 256], axis=-1)
    return np.broadcast_to(image[None], (height, width, 3)).astype(np.uint8).copy()


def test_normalise_is_exact() -> None:
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    image[0] = 255
    image[1, 0] = (51, 102, 204)
    tensor = normalize_to_tensor(image)
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == (3, 2, 3)
    assert torch.all(tensor[:, 0] == 1.0)
    assert torch.all(tensor[:, 1, 1:] == -1.0)
    expected = torch.tensor([(51 / 255 - 0.5) / 0.5, (102 / 255 - 0.5) / 0.5, (204 / 255 - 0.5) / 0.5])
    torch.testing.assert_close(tensor[:, 1, 0], expected.float())  # channel order kept: R, G, B
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        normalize_to_tensor(image.astype(np.float32))


def test_normalise_in_place_keeps_every_bit_of_the_formula() -> None:
    """The in-place arithmetic gives what (x / 255 - 0.5) / 0.5 gives, for every uint8 value."""
    image = np.random.default_rng(0).permutation(np.arange(112 * 112 * 3) % 256).astype(np.uint8).reshape(112, 112, 3)
    reference = (torch.from_numpy(image).permute(2, 0, 1).to(torch.float32) / 255.0 - 0.5) / 0.5
    assert torch.equal(normalize_to_tensor(image), reference)
    images = [image, np.ascontiguousarray(image[::-1]), np.zeros_like(image)]
    batch = normalize_batch(images)
    assert batch.is_contiguous() and torch.equal(batch, torch.stack([normalize_to_tensor(im) for im in images]))
    with pytest.raises(ValueError, match="share a size"):
        normalize_batch([image, image[:64]])


def test_flip_flips_and_is_seeded() -> None:
    image = ramp_image(4, 6)
    np.testing.assert_array_equal(RandomHorizontalFlip(1.0)(image), image[:, ::-1])
    np.testing.assert_array_equal(RandomHorizontalFlip(0.0)(image), image)

    def decisions(seed: int) -> list[bool]:
        flip = RandomHorizontalFlip(0.5, torch.Generator().manual_seed(seed))
        return [bool(flip(image)[0, 0, 0] != image[0, 0, 0]) for _ in range(200)]

    first = decisions(7)
    assert first == decisions(7)
    assert first != decisions(8)
    assert 0.35 < np.mean(first) < 0.65


def test_grey_to_rgb_and_resize() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = GreyToRGB()(grey)
    assert rgb.shape == (3, 4, 3) and np.all(rgb == grey[:, :, None])
    assert GreyToRGB()(np.zeros((2, 2, 4), np.uint8)).shape == (2, 2, 3)
    resized = Resize(8)(np.full((5, 7, 3), 77, np.uint8))
    assert resized.shape == (8, 8, 3) and np.all(resized == 77)


def test_center_crop_keeps_the_middle() -> None:
    image = np.zeros((218, 178, 3), np.uint8)
    image[100:118, 80:98] = 255  # a bright square at the centre
    image[:10] = 128  # a grey band at the top (rows 0-9) is cropped away (crop starts near row 19)
    cropped = CenterCropResize(112)(image)
    assert cropped.shape == (112, 112, 3)
    assert cropped[56, 56, 0] == 255 and cropped[0, 56, 0] == 0


def test_flip_train_pipeline() -> None:
    transform = build_train_transform("flip", 112, generator=torch.Generator().manual_seed(0))
    image = ramp_image()
    outputs = [transform(image) for _ in range(20)]
    assert all(o.dtype == torch.float32 and tuple(o.shape) == (3, 112, 112) for o in outputs)
    plain = normalize_to_tensor(image)
    flipped = normalize_to_tensor(np.ascontiguousarray(image[:, ::-1]))
    assert any(torch.equal(o, plain) for o in outputs) and any(torch.equal(o, flipped) for o in outputs)
    grey_out = transform(np.full((64, 64), 255, np.uint8))
    assert tuple(grey_out.shape) == (3, 112, 112) and torch.all(grey_out == 1.0)


def test_randaugment_pipeline_runs_and_augments() -> None:
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    transform = build_train_transform("randaugment", 112)
    step_names = repr(transform.steps)
    assert "RandAugment" in step_names and "ColorJitter" in step_names and "RandomErasing" in step_names
    image = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    plain = normalize_to_tensor(image)
    outputs = [transform(image) for _ in range(4)]
    for output in outputs:
        assert output.dtype == torch.float32 and tuple(output.shape) == (3, 112, 112)
        assert torch.isfinite(output).all()
    assert any(not torch.allclose(output, plain) for output in outputs)


def test_random_erasing_probability_is_used() -> None:
    image = np.full((32, 32, 3), 128, np.uint8)
    always = build_train_transform("randaugment", 32, color_jitter=0.0, erase_probability=1.0)
    never = build_train_transform("randaugment", 32, color_jitter=0.0, erase_probability=0.0)
    assert "RandomErasing" not in repr(never.steps) and "ColorJitter" not in repr(never.steps)
    torch.manual_seed(1)
    random.seed(1)
    erased = always(image)
    # a flat grey image stays exactly flat under most RandAugment ops; pixel-mode erasing adds noise
    assert erased.std() > 0.05


def test_eval_transform() -> None:
    transform = build_eval_transform(112)
    image = ramp_image()
    assert torch.equal(transform(image), normalize_to_tensor(image))
    out = transform(np.zeros((218, 178, 3), np.uint8))
    assert tuple(out.shape) == (3, 112, 112) and torch.all(out == -1.0)


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="'flip' or 'randaugment'"):
        build_train_transform("mixup")
