"""CelebA attributes (Liu et al., "Deep Learning Face Attributes in the Wild", ICCV 2015).

Files (as CelebA ships them): ``list_attr_celeba.txt`` (line 1 the image count, line 2 the
40 attribute names, then ``<file> v1 .. v40`` with values -1/1, mapped here to 0/1),
``list_eval_partition.txt`` (``<file> 0|1|2`` = train/val/test) and ``img_align_celeba/`` (178x218
JPEGs, resized so the shorter side is 112 and centre-cropped to 112x112, as the FACES protocol does).
The two lists may sit in ``root`` or in the official ``root/Anno`` and ``root/Eval`` folders.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ._images import DECODE_WORKERS, read_image_file, resize_shorter_then_center_crop
from .errors import DataFormatError

__all__ = [
    "CELEBA_NUM_ATTRIBUTES",
    "CELEBA_SPLITS",
    "CelebAAttributes",
    "CelebADataset",
    "read_celeba_attributes",
    "read_celeba_partition",
]

CELEBA_NUM_ATTRIBUTES = 40
CELEBA_SPLITS = {"train": 0, "val": 1, "test": 2}


class CelebAAttributes(NamedTuple):
    """Parsed ``list_attr_celeba.txt``: attribute names, file names and a uint8 (N, 40) 0/1 matrix."""

    names: list[str]
    files: list[str]
    values: np.ndarray


def read_celeba_attributes(
    path: str | os.PathLike[str], num_attributes: int = CELEBA_NUM_ATTRIBUTES
) -> CelebAAttributes:
    """Parse and validate ``list_attr_celeba.txt`` (count line, names line, -1/1 values -> 0/1)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CelebA attribute list not found")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) < 2:
        raise DataFormatError(f"{path}: expected a count line and an attribute-name line")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise DataFormatError(f"{path}: line 1: expected the image count, got {lines[0][:60]!r}") from None
    names = lines[1].split()
    if len(names) != num_attributes:
        raise DataFormatError(f"{path}: line 2: expected {num_attributes} attribute names, found {len(names)}")
    if len(lines) - 2 != count:
        raise DataFormatError(f"{path}: line 1 announces {count} images, found {len(lines) - 2} lines")
    files: list[str] = []
    values = np.zeros((count, num_attributes), dtype=np.uint8)
    for row, line in enumerate(lines[2:]):
        line_number = row + 3
        tokens = line.split()
        if len(tokens) != num_attributes + 1:
            raise DataFormatError(
                f"{path}: line {line_number}: expected a file name and {num_attributes} values, "
                f"found {len(tokens)} fields"
            )
        for column, token in enumerate(tokens[1:]):
            if token == "1":
                values[row, column] = 1
            elif token != "-1":
                raise DataFormatError(
                    f"{path}: line {line_number}: attribute {names[column]} is {token!r}, expected -1 or 1"
                )
        files.append(tokens[0])
    if len(set(files)) != len(files):
        raise DataFormatError(f"{path}: some image file is listed more than once")
    return CelebAAttributes(names, files, values)


def read_celeba_partition(path: str | os.PathLike[str]) -> dict[str, int]:
    """Parse ``list_eval_partition.txt`` into ``{file: 0 train | 1 val | 2 test}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CelebA partition list not found")
    partition: dict[str, int] = {}
    for line_number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 2 or tokens[1] not in ("0", "1", "2"):
            raise DataFormatError(f"{path}: line {line_number}: expected '<file> 0|1|2', got {line.strip()[:60]!r}")
        if tokens[0] in partition:
            raise DataFormatError(f"{path}: line {line_number}: {tokens[0]} is listed twice")
        partition[tokens[0]] = int(tokens[1])
    return partition


def _find_list(root: Path, name: str, official_folder: str) -> Path:
    for candidate in (root / name, root / official_folder / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{root / name}: CelebA file not found (also looked in {root / official_folder})")


class CelebADataset:
    """One CelebA split: ``dataset[i] -> (uint8 112x112x3 image, float32 (40,) 0/1 attributes)``.

    The image is resized (shorter side ``image_size``, bilinear) and centre-cropped, then passed to
    ``transform`` when given. Attributes are float32 so they feed BCE-with-logits directly.
    """

    decode_workers = DECODE_WORKERS

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        image_size: int = 112,
        transform: Callable[[np.ndarray], Any] | None = None,
    ) -> None:
        if split not in CELEBA_SPLITS:
            raise ValueError(f"CelebA split must be one of {sorted(CELEBA_SPLITS)}, got {split!r}")
        self.root = Path(root)
        self.image_dir = self.root / "img_align_celeba"
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"{self.image_dir}: CelebA image folder not found")
        attributes_path = _find_list(self.root, "list_attr_celeba.txt", "Anno")
        partition_path = _find_list(self.root, "list_eval_partition.txt", "Eval")
        table = read_celeba_attributes(attributes_path)
        partition = read_celeba_partition(partition_path)
        row_of = {name: row for row, name in enumerate(table.files)}
        wanted = CELEBA_SPLITS[split]
        self.files = [name for name, part in partition.items() if part == wanted]
        missing = [name for name in self.files if name not in row_of]
        if missing:
            raise DataFormatError(f"{attributes_path}: no attributes for {missing[0]} (listed in {partition_path})")
        self.split = split
        self.image_size = image_size
        self.transform = transform
        self.attribute_names = table.names
        self.attributes = table.values[[row_of[name] for name in self.files]] if self.files else table.values[:0]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, np.ndarray]:
        image = read_image_file(self.image_dir / self.files[index])
        image = resize_shorter_then_center_crop(image, self.image_size)
        target = self.attributes[index].astype(np.float32)
        return (self.transform(image) if self.transform is not None else image), target
