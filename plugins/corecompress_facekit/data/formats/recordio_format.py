"""Byte layout of insightface / dmlc RecordIO records, shared by the reader and the writer.

As insightface's training sets use it and dmlc-core's
``recordio.h`` defines it: ``uint32 magic 0xced7230a`` (little-endian), ``uint32 lrec`` (upper 3 bits continuation
flag, lower 29 bits length), payload, zero padding to 4 bytes; payload = ``<IfQQ`` header (+ ``flag``
float32 labels when flag > 0) + encoded image.
"""
from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import DataFormatError

RECORDIO_MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
LENGTH_BITS = 29
LENGTH_MASK = (1 << LENGTH_BITS) - 1
RECORD_HEAD = struct.Struct("<II")
IMAGE_HEADER = struct.Struct("<IfQQ")
MAX_CLASS_ID = 2**31 - 1  # found by fuzzing: a label of 1e30 overflowed the int64 label array

@dataclass(frozen=True)
class RecordHeader:
    """The ``<IfQQ`` header of a record payload; ``label`` has ``flag`` values when flag > 0."""

    flag: int
    label: tuple[float, ...]
    id: int
    id2: int


def resolve_recordio_paths(prefix_or_dir: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """Return (``.rec``, ``.idx``, ``property``) paths for a directory (``train.*``) or a prefix.

    ``data/faces_emore`` means ``data/faces_emore/train.rec``; ``data/x/val`` or ``data/x/val.rec``
    means ``data/x/val.rec`` + ``data/x/val.idx``. ``property`` is looked up next to the ``.rec``.
    """
    path = Path(prefix_or_dir)
    if path.is_dir():
        prefix = path / "train"
    elif path.suffix in (".rec", ".idx"):
        prefix = path.with_suffix("")
    else:
        prefix = path
    return prefix.with_suffix(".rec"), prefix.with_suffix(".idx"), prefix.parent / "property"


def parse_header(payload: bytes, where: str) -> tuple[RecordHeader, int]:
    """Unpack the header (and label array); return it with the offset where the image starts."""
    if len(payload) < IMAGE_HEADER.size:
        raise DataFormatError(f"{where}: payload of {len(payload)} bytes is shorter than the 24-byte header")
    flag, label, record_id, record_id2 = IMAGE_HEADER.unpack_from(payload, 0)
    start = IMAGE_HEADER.size
    if flag == 0:
        return RecordHeader(0, (float(label),), record_id, record_id2), start
    end = start + 4 * flag
    if len(payload) < end:
        raise DataFormatError(f"{where}: header announces {flag} label values but the payload is too short")
    labels = struct.unpack_from(f"<{flag}f", payload, start)
    return RecordHeader(flag, tuple(float(v) for v in labels), record_id, record_id2), end


def class_label(header: RecordHeader, where: str) -> int:
    """The identity label of an image record: its label (first value when an array)."""
    value = header.label[0]
    if not math.isfinite(value) or not 0 <= value <= MAX_CLASS_ID or value != int(value):
        raise DataFormatError(f"{where}: label {value!r} is not a non-negative integer class id below 2^31")
    return int(value)


def encode_record(payload: bytes) -> bytes:
    """Frame a payload as dmlc does: split where the magic sits at an aligned offset, pad to 4."""
    pieces: list[bytes] = []
    start = 0
    position = payload.find(MAGIC_BYTES)
    while position >= 0:
        if position % 4 == 0:  # dmlc only looks at 4-byte aligned words
            pieces.append(payload[start:position])
            start = position + 4
            position = payload.find(MAGIC_BYTES, start)
        else:
            position = payload.find(MAGIC_BYTES, position + 1)
    pieces.append(payload[start:])
    out = bytearray()
    for number, piece in enumerate(pieces):
        if len(pieces) == 1:
            continuation = 0
        else:
            continuation = 1 if number == 0 else (3 if number == len(pieces) - 1 else 2)
        if len(piece) > LENGTH_MASK:
            raise ValueError(f"record of {len(piece)} bytes exceeds the RecordIO limit of 2^29 - 1")
        out += RECORD_HEAD.pack(RECORDIO_MAGIC, (continuation << LENGTH_BITS) | len(piece))
        out += piece
        out += b"\0" * (-len(piece) % 4)
    return bytes(out)


def pack_payload(flag_labels: Sequence[float] | float, record_id: int, image_bytes: bytes = b"") -> bytes:
    if isinstance(flag_labels, (int, float)):
        return IMAGE_HEADER.pack(0, float(flag_labels), record_id, 0) + image_bytes
    values = [float(v) for v in flag_labels]
    return IMAGE_HEADER.pack(len(values), values[0], record_id, 0) + struct.pack(f"<{len(values)}f", *values) + image_bytes
