"""insightface RecordIO training sets (``train.rec``, ``train.idx``, ``property``) without mxnet.

Format (/work/shared/spec/evaluation.md, "Data formats users have"; dmlc-core ``recordio.h``):

- ``train.idx``: text lines ``key<TAB>byte_offset`` into ``train.rec``.
- ``train.rec``: records ``uint32 magic 0xced7230a`` (little-endian), ``uint32 lrec`` (upper 3 bits the
  continuation flag, lower 29 bits the payload length), the payload, zero padding to a multiple of 4.
- payload: header ``<IfQQ`` (flag, label, id, id2); when flag > 0, ``flag`` float32 values follow and
  form the label array; then the encoded image (JPEG or PNG).
- record 0 is a meta record whose label[0] = 1 + the last image key: images are keys 1 .. label[0]-1.
  The records after the images hold per-identity key ranges (ignored when reading).

Continuation flags: dmlc's writer splits a payload wherever the magic number appears at a 4-byte aligned
position (flag 1 = first part, 2 = middle, 3 = last; the magic itself is dropped and comes back between
the parts). This is rare (about once per 10^10 payload words) but happens in multi-million image sets,
so the reader joins such parts exactly as dmlc does; any other use of the flag is a ``DataFormatError``.

Reading is safe with DataLoader workers: the ``.rec`` file is opened lazily in each process (the handle
is re-opened after a fork and dropped when pickled), and reads use ``os.pread`` (no shared file offset).
"""
from __future__ import annotations

import math
import os
import struct
import threading
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._images import decode_image_bytes, encode_image
from .errors import DataFormatError

RECORDIO_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
_LENGTH_BITS = 29
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
_RECORD_HEAD = struct.Struct("<II")
IMAGE_HEADER = struct.Struct("<IfQQ")

__all__ = [
    "RECORDIO_MAGIC",
    "RecordHeader",
    "RecordIODataset",
    "read_index",
    "resolve_recordio_paths",
    "write_recordio",
]


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


def read_index(idx_path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Parse a ``.idx`` file into (keys, offsets), both int64 and sorted by key.

    Arrays instead of a dict keep a 5.8 M-image index at ~90 MB, shared copy-on-write by workers.
    """
    path = Path(idx_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: RecordIO index (.idx) not found")
    keys, offsets = array("q"), array("q")
    with open(path, encoding="ascii", errors="replace") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) != 2:
                    raise ValueError
                key, offset = int(fields[0]), int(fields[1])
            except ValueError:
                raise DataFormatError(
                    f"{path}: line {line_number}: expected 'key<TAB>offset', got {line.strip()[:60]!r}"
                ) from None
            if key < 0 or offset < 0:
                raise DataFormatError(f"{path}: line {line_number}: negative key or offset")
            keys.append(key)
            offsets.append(offset)
    key_array = np.frombuffer(keys, dtype=np.int64) if keys else np.zeros(0, np.int64)
    offset_array = np.frombuffer(offsets, dtype=np.int64) if offsets else np.zeros(0, np.int64)
    if key_array.size == 0:
        raise DataFormatError(f"{path}: RecordIO index is empty")
    order = np.argsort(key_array, kind="stable")
    key_array, offset_array = key_array[order], offset_array[order]
    duplicated = np.nonzero(np.diff(key_array) == 0)[0]
    if duplicated.size:
        raise DataFormatError(f"{path}: key {int(key_array[duplicated[0]])} appears more than once")
    return key_array, offset_array


def _read_property(path: Path) -> tuple[int, int, int] | None:
    """Parse ``property`` ("num_classes,height,width"); None when the file does not exist."""
    if not path.is_file():
        return None
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(","))
        if len(values) != 3 or min(values) <= 0:
            raise ValueError
    except ValueError:
        raise DataFormatError(
            f"{path}: expected 'num_classes,height,width' (e.g. '85742,112,112'), got {text[:60]!r}"
        ) from None
    return values  # type: ignore[return-value]


def _parse_header(payload: bytes, where: str) -> tuple[RecordHeader, int]:
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


def _class_label(header: RecordHeader, where: str) -> int:
    """The identity label of an image record: its label (first value when an array)."""
    value = header.label[0]
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise DataFormatError(f"{where}: label {value!r} is not a non-negative integer class id")
    return int(value)


class RecordIODataset:
    """Images and identity labels of an insightface RecordIO set (MS1MV2, CASIA-WebFace, Glint360K).

    ``dataset[i] -> (uint8 HxWx3 RGB array, int label)`` (or ``(transform(image), label)``); JPEGs are
    decoded only when an item is read. ``labels`` reads only the record headers.
    Files without a meta record 0 (e.g. packed by plain ``im2rec``) are read as "every key is an image".
    """

    def __init__(
        self,
        prefix_or_dir: str | os.PathLike[str],
        transform: Callable[[np.ndarray], Any] | None = None,
    ) -> None:
        self.rec_path, self.idx_path, self.property_path = resolve_recordio_paths(prefix_or_dir)
        if not self.rec_path.is_file():
            raise FileNotFoundError(f"{self.rec_path}: RecordIO data file (.rec) not found")
        self.transform = transform
        self._keys, self._offsets = read_index(self.idx_path)
        self._file_size = self.rec_path.stat().st_size
        past_end = np.nonzero(self._offsets + _RECORD_HEAD.size > self._file_size)[0]
        if past_end.size:
            bad = past_end[0]
            raise DataFormatError(
                f"{self.idx_path}: key {int(self._keys[bad])}: offset {int(self._offsets[bad])} is past the end "
                f"of {self.rec_path} ({self._file_size} bytes)"
            )
        self._property = _read_property(self.property_path)
        self._handle: int | None = None
        self._handle_pid: int | None = None
        self._lock = threading.Lock()
        self._labels: np.ndarray | None = None
        self._image_keys = self._find_image_keys()

    # ----------------------------------------------------------------- file access
    def _fd(self) -> int:
        """The file descriptor of this process, opened on first use and re-opened after a fork."""
        pid = os.getpid()
        if self._handle is None or self._handle_pid != pid:
            with self._lock:
                if self._handle is None or self._handle_pid != pid:
                    self._handle = os.open(self.rec_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
                    self._handle_pid = pid
        return self._handle

    def _read_at(self, offset: int, size: int) -> bytes:
        fd = self._fd()
        if hasattr(os, "pread"):
            return os.pread(fd, size, offset)
        with self._lock:  # pragma: no cover - platforms without pread (Windows)
            os.lseek(fd, offset, os.SEEK_SET)
            return os.read(fd, size)

    def _offset_of(self, key: int) -> int:
        position = int(np.searchsorted(self._keys, key))
        if position >= self._keys.size or self._keys[position] != key:
            raise DataFormatError(f"{self.idx_path}: key {key} is not in the index")
        return int(self._offsets[position])

    def read_payload(self, key: int, limit: int | None = None) -> bytes:
        """Return the payload of record ``key`` (joining continuation parts), or its first ``limit`` bytes."""
        where = f"{self.rec_path}: key {key}"
        offset = self._offset_of(key)
        parts: list[bytes] = []
        while True:
            head_size = _RECORD_HEAD.size
            chunk = self._read_at(offset, head_size + (limit or 0) if not parts else head_size)
            if len(chunk) < head_size:
                raise DataFormatError(f"{where}: record truncated at byte {offset} (file ends)")
            magic, lrec = _RECORD_HEAD.unpack_from(chunk, 0)
            if magic != RECORDIO_MAGIC:
                raise DataFormatError(
                    f"{where}: bad magic 0x{magic:08x} at byte {offset} (expected 0x{RECORDIO_MAGIC:08x}; "
                    f"wrong .idx offset or not a RecordIO file)"
                )
            continuation, length = lrec >> _LENGTH_BITS, lrec & _LENGTH_MASK
            if offset + head_size + length > self._file_size:
                raise DataFormatError(
                    f"{where}: record truncated: {length} payload bytes announced at byte {offset}, "
                    f"file has {self._file_size} bytes"
                )
            if continuation > 3 or (not parts and continuation in (2, 3)) or (parts and continuation in (0, 1)):
                raise DataFormatError(
                    f"{where}: unsupported continuation flag {continuation} at byte {offset} "
                    f"(only whole records or dmlc multi-part records 1,2..,3 are supported)"
                )
            if not parts and continuation == 0:
                if limit is not None:
                    return chunk[head_size : head_size + min(limit, length)]
                return self._read_at(offset + head_size, length)
            parts.append(self._read_at(offset + head_size, length))
            if continuation == 3:
                return _MAGIC_BYTES.join(parts)
            offset += head_size + ((length + 3) & ~3)

    def read_header(self, key: int) -> RecordHeader:
        """Header of record ``key`` without reading its image."""
        prefix = self.read_payload(key, limit=IMAGE_HEADER.size + 4 * 8)  # room for up to 8 labels
        flag = IMAGE_HEADER.unpack_from(prefix, 0)[0] if len(prefix) >= IMAGE_HEADER.size else 0
        if len(prefix) < IMAGE_HEADER.size + 4 * flag:
            prefix = self.read_payload(key, limit=IMAGE_HEADER.size + 4 * flag)
        return _parse_header(prefix, f"{self.rec_path}: key {key}")[0]

    def read_record(self, key: int) -> tuple[RecordHeader, bytes]:
        """Header and encoded image bytes of record ``key``."""
        where = f"{self.rec_path}: key {key}"
        payload = self.read_payload(key)
        header, start = _parse_header(payload, where)
        return header, payload[start:]

    def _find_image_keys(self) -> np.ndarray:
        if self._keys[0] == 0:
            meta = self.read_header(0)
            if meta.flag > 0:
                end = int(meta.label[0])
                if end < 1:
                    raise DataFormatError(f"{self.rec_path}: key 0: meta record announces {end - 1} images")
                image_keys = np.arange(1, end, dtype=np.int64)
                positions = np.searchsorted(self._keys, image_keys).clip(max=self._keys.size - 1)
                missing = np.nonzero(self._keys[positions] != image_keys)[0]
                if missing.size:
                    raise DataFormatError(
                        f"{self.idx_path}: image key {int(image_keys[missing[0]])} (of 1..{end - 1} announced "
                        f"by the meta record) is not in the index"
                    )
                return image_keys
        return self._keys.copy()

    # ----------------------------------------------------------------- dataset API
    def __len__(self) -> int:
        return int(self._image_keys.size)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        key = int(self._image_keys[index])
        where = f"{self.rec_path}: key {key}"
        header, image_bytes = self.read_record(key)
        image = decode_image_bytes(image_bytes, where)
        label = _class_label(header, where)
        return (self.transform(image) if self.transform is not None else image), label

    @property
    def image_keys(self) -> np.ndarray:
        """RecordIO keys of the images, in dataset order."""
        return self._image_keys

    @property
    def labels(self) -> np.ndarray:
        """int64 identity label of every image, read from the headers only (cached)."""
        if self._labels is None:
            labels = np.empty(len(self), dtype=np.int64)
            for index, key in enumerate(self._image_keys.tolist()):
                labels[index] = _class_label(self.read_header(key), f"{self.rec_path}: key {key}")
            self._labels = labels
        return self._labels

    @property
    def num_classes(self) -> int:
        """Number of identities: from ``property``, else 1 + the largest label."""
        if self._property is not None:
            return self._property[0]
        return int(self.labels.max()) + 1 if len(self) else 0

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(height, width) from ``property``, or None when there is no ``property`` file."""
        return None if self._property is None else (self._property[1], self._property[2])

    def close(self) -> None:
        """Close this process's file handle (it is re-opened on the next read)."""
        if self._handle is not None and self._handle_pid == os.getpid():
            os.close(self._handle)
        self._handle = self._handle_pid = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = state["_handle_pid"] = None  # never ship a file handle to another process
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


# --------------------------------------------------------------------- writer
def _encode_record(payload: bytes) -> bytes:
    """Frame a payload as dmlc does: split where the magic sits at an aligned offset, pad to 4."""
    pieces: list[bytes] = []
    start = 0
    position = payload.find(_MAGIC_BYTES)
    while position >= 0:
        if position % 4 == 0:  # dmlc only looks at 4-byte aligned words
            pieces.append(payload[start:position])
            start = position + 4
            position = payload.find(_MAGIC_BYTES, start)
        else:
            position = payload.find(_MAGIC_BYTES, position + 1)
    pieces.append(payload[start:])
    out = bytearray()
    for number, piece in enumerate(pieces):
        if len(pieces) == 1:
            continuation = 0
        else:
            continuation = 1 if number == 0 else (3 if number == len(pieces) - 1 else 2)
        if len(piece) > _LENGTH_MASK:
            raise ValueError(f"record of {len(piece)} bytes exceeds the RecordIO limit of 2^29 - 1")
        out += _RECORD_HEAD.pack(RECORDIO_MAGIC, (continuation << _LENGTH_BITS) | len(piece))
        out += piece
        out += b"\0" * (-len(piece) % 4)
    return bytes(out)


def _pack_payload(flag_labels: Sequence[float] | float, record_id: int, image_bytes: bytes = b"") -> bytes:
    if isinstance(flag_labels, (int, float)):
        return IMAGE_HEADER.pack(0, float(flag_labels), record_id, 0) + image_bytes
    values = [float(v) for v in flag_labels]
    return IMAGE_HEADER.pack(len(values), values[0], record_id, 0) + struct.pack(f"<{len(values)}f", *values) + image_bytes


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
    records = [_pack_payload([float(n + 1), float(n + 1 + len(ranges))], 0)]
    records += [_pack_payload(float(label), key, data) for key, (label, data) in enumerate(zip(label_list, encoded), 1)]
    records += [_pack_payload([float(start), float(end)], n + 1 + i) for i, (start, end) in enumerate(ranges)]

    offset = 0
    with open(rec_path, "wb") as rec, open(idx_path, "w", encoding="ascii") as idx:
        for key, payload in enumerate(records):
            framed = _encode_record(payload)
            rec.write(framed)
            idx.write(f"{key}\t{offset}\n")
            offset += len(framed)
    num_classes = max(label_list) + 1 if label_list else 0
    property_path.write_text(f"{num_classes},{size[0]},{size[1]}\n", encoding="ascii")
    return rec_path, idx_path
