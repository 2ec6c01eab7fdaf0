"""Pack images + identity labels as an insightface RecordIO set (``.rec``, ``.idx``, ``property``).

Byte layout in :mod:`.recordio_format`; files written here are what
``mxnet.recordio.MXIndexedRecordIO`` + ``pack`` would write, and :class:`.recordio.RecordIODataset`
reads them. Used by the tests, and by users who want to pack their own identity folders.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._images import decode_image_bytes, encode_image
from .recordio_format import encode_record, pack_payload, resolve_recordio_paths

__all__ = ["write_recordio"]


def write_recordio(
    prefix_or_dir: str | os.PathLike[str],
    images: Sequence[np.ndarray | bytes],
    labels: Sequence[int],
    *,
    image_format: str = "JPEG",
    quality: int = 95,
) -> tuple[Path, Path]:
    """Pack images + identity labels as an insightface RecordIO set (``.rec``, ``.idx``, ``property``).

    ``images`` are uint8 HxWx3 arrays (encoded with ``image_format``) or already encoded bytes (kept
    as is). ``prefix_or_dir``: an existing or new directory (gets ``train.rec``/``train.idx``/``property``)
    or a path ending in ``.rec``. Layout as insightface: meta record 0 (label = [n+1, n+1+#identity records]), images at keys
    1..n, then one record per identity whose images are contiguous, labelled [first key, end key).
    Identity records are written only when every identity's images are contiguous. Returns the paths.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    label_list = [int(v) for v in labels]
    if any(v < 0 for v in label_list):
        raise ValueError("labels must be non-negative integers")
    target = Path(prefix_or_dir)
    if not target.exists() and target.suffix not in (".rec", ".idx"):
        target.mkdir(parents=True)  # a new name without suffix is a dataset directory
    rec_path, idx_path, property_path = resolve_recordio_paths(target)
    rec_path.parent.mkdir(parents=True, exist_ok=True)

    encoded: list[bytes] = []
    for image in images:
        encoded.append(bytes(image) if isinstance(image, (bytes, bytearray)) else encode_image(image, image_format, quality))
    size = (0, 0)
    if encoded:
        first = decode_image_bytes(encoded[0], "first image")
        size = (first.shape[0], first.shape[1])

    ranges: list[tuple[int, int]] = []
    for key, label in enumerate(label_list, start=1):
        if ranges and label_list[key - 2] == label:
            ranges[-1] = (ranges[-1][0], key + 1)
        else:
            ranges.append((key, key + 1))
    if len(ranges) != len(set(label_list)):
        ranges = []  # some identity is not contiguous: its key range would be meaningless
    n = len(encoded)
    records = [pack_payload([float(n + 1), float(n + 1 + len(ranges))], 0)]
    records += [pack_payload(float(label), key, data) for key, (label, data) in enumerate(zip(label_list, encoded), 1)]
    records += [pack_payload([float(start), float(end)], n + 1 + i) for i, (start, end) in enumerate(ranges)]

    offset = 0
    with open(rec_path, "wb") as rec, open(idx_path, "w", encoding="ascii") as idx:
        for key, payload in enumerate(records):
            framed = encode_record(payload)
            rec.write(framed)
            idx.write(f"{key}\t{offset}\n")
            offset += len(framed)
    num_classes = max(label_list) + 1 if label_list else 0
    property_path.write_text(f"{num_classes},{size[0]},{size[1]}\n", encoding="ascii")
    return rec_path, idx_path
