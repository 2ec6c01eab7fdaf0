"""Labels of many RecordIO records at once: the ``.rec`` is memory-mapped and the header words are gathered.

A record starts with 4-byte words ``magic, lrec, flag, label`` (:mod:`.recordio_format`); records are
4-byte aligned, so the ``.rec`` is viewed as little-endian uint32 words and, for a chunk of offsets,
each word is one vectorised gather (``flag > 0``: the first value of the label array, word 8).
Only the pages holding headers are touched. A record that is not plainly fine — misaligned offset,
bad magic, a continuation part, a label that is not an integer class id, a payload past the end of
the file — is returned as "to check", and the caller reads it with the checked per-record path,
which explains what is wrong or handles it.
"""
from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from .recordio_format import IMAGE_HEADER, LENGTH_BITS, LENGTH_MASK, MAX_CLASS_ID, RECORDIO_MAGIC

__all__ = ["gather_labels"]

_CHUNK = 1 << 20  # records per gather: bounds the temporary arrays at a few tens of MB
_HEAD_WORDS = 4  # magic, lrec, flag, label
_ARRAY_WORD = 2 + IMAGE_HEADER.size // 4  # first float of a label array: after the 8-byte head and 24-byte header


def gather_labels(rec_path: str | os.PathLike[str], offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, to_check)``: the int64 class id of the record at each offset (0 where unknown), and
    the positions (into ``offsets``) that need the checked per-record path."""
    offsets = np.asarray(offsets, dtype=np.int64)
    labels = np.zeros(offsets.size, dtype=np.int64)
    size = Path(rec_path).stat().st_size
    if offsets.size == 0 or size < 4 * _HEAD_WORDS:
        return labels, np.arange(offsets.size)
    with open(rec_path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        to_check = _gather_into(labels, offsets, mapped, size)  # every view of ``mapped`` is gone on return
    return labels, to_check


def _gather_into(labels: np.ndarray, offsets: np.ndarray, mapped: mmap.mmap, size: int) -> np.ndarray:
    words = np.frombuffer(mapped, dtype="<u4", count=size // 4)
    to_check = []
    for start in range(0, offsets.size, _CHUNK):
        chunk = offsets[start:start + _CHUNK]
        values, fine = _chunk_labels(words, chunk, size)
        labels[start:start + chunk.size][fine] = values[fine]
        to_check.append(np.flatnonzero(~fine) + start)
    del words
    return np.concatenate(to_check)


def _chunk_labels(words: np.ndarray, offsets: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    fine = (offsets % 4 == 0) & (offsets >= 0) & (offsets <= size - 4 * _HEAD_WORDS)
    at = np.where(fine, offsets // 4, 0)
    magic, lrec, flag = words[at], words[at + 1], words[at + 2].astype(np.int64)
    length = (lrec & LENGTH_MASK).astype(np.int64)
    needed = IMAGE_HEADER.size + 4 * flag  # header plus the label array when flag > 0
    fine &= (magic == RECORDIO_MAGIC) & (lrec >> LENGTH_BITS == 0) & (length >= needed)
    fine &= offsets + 8 + length <= size
    in_array = fine & (flag > 0)
    value = words[at + 3].view("<f4").astype(np.float64)
    value[in_array] = words[at[in_array] + _ARRAY_WORD].view("<f4")
    with np.errstate(invalid="ignore"):
        fine &= np.isfinite(value) & (value >= 0) & (value <= MAX_CLASS_ID) & (value == np.floor(value))
    return np.where(fine, value, 0).astype(np.int64), fine
