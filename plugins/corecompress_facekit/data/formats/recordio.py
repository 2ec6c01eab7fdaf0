"""insightface RecordIO training sets (``train.rec``, ``train.idx``, ``property``) without mxnet.

Format (the insightface project's training sets; dmlc-core ``recordio.h``):

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

Start-up: the parsed index and the labels (read from the record headers by one vectorised gather over
a memory map, :mod:`.recordio_labels`) are cached outside the data folder (:mod:`.recordio_cache`), so a
second start of a multi-million-image set reads two small files instead of the whole index.
"""
from __future__ import annotations

import math
import os
import threading
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._images import DECODE_WORKERS, decode_image_bytes
from .errors import DataFormatError
from .recordio_cache import RecordIOCache, worth_caching
from .recordio_format import (
    IMAGE_HEADER,
    LENGTH_BITS,
    LENGTH_MASK,
    MAGIC_BYTES,
    RECORD_HEAD,
    RECORDIO_MAGIC,
    RecordHeader,
    class_label,
    parse_header,
    resolve_recordio_paths,
)
from .recordio_labels import gather_labels
from .recordio_writer import write_recordio

_INT64_MAX = 2**63 - 1

__all__ = [
    "RECORDIO_MAGIC",
    "RecordHeader",
    "RecordIODataset",
    "read_index",
    "resolve_recordio_paths",
    "write_recordio",
]


def read_index(idx_path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Parse a ``.idx`` file into (keys, offsets), both int64 and sorted by key.

    Arrays instead of a dict keep a 5.8 M-image index at ~90 MB, shared copy-on-write by workers.
    """
    path = Path(idx_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: RecordIO index (.idx) not found")
    parsed = _read_index_fast(path.read_bytes())
    key_array, offset_array = parsed if parsed is not None else _read_index_by_line(path)
    if key_array.size == 0:
        raise DataFormatError(f"{path}: RecordIO index is empty")
    if key_array.min() < 0 or offset_array.min() < 0:
        raise DataFormatError(f"{path}: negative key or offset")
    order = np.argsort(key_array, kind="stable")
    key_array, offset_array = key_array[order], offset_array[order]
    duplicated = np.nonzero(np.diff(key_array) == 0)[0]
    if duplicated.size:
        raise DataFormatError(f"{path}: key {int(key_array[duplicated[0]])} appears more than once")
    return key_array, offset_array


def _read_index_fast(raw: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """Vectorised parse of a well-formed index (2-3x faster on millions of lines); None if unsure."""
    if not raw.strip() or b"\n\n" in raw or raw[:1].isspace():
        return None
    line_count = raw.count(b"\n") + (0 if raw.endswith(b"\n") else 1)
    try:
        tokens = np.array(raw.split(), dtype=np.int64)
    except (ValueError, OverflowError):
        return None
    if tokens.size != 2 * line_count:  # some line has a number of fields other than two
        return None
    return tokens[0::2].copy(), tokens[1::2].copy()


def _read_index_by_line(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Line-by-line parse that tolerates blank lines and names the first malformed line."""
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
            if key > _INT64_MAX or offset > _INT64_MAX:
                raise DataFormatError(f"{path}: line {line_number}: key or offset larger than 2^63 - 1")
            keys.append(key)
            offsets.append(offset)
    return np.array(keys, dtype=np.int64), np.array(offsets, dtype=np.int64)


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

class RecordIODataset:
    """Images and identity labels of an insightface RecordIO set (MS1MV2, CASIA-WebFace, Glint360K).

    ``dataset[i] -> (uint8 HxWx3 RGB array, int label)`` (or ``(transform(image), label)``); JPEGs are
    decoded only when an item is read. ``labels`` reads only the record headers.
    Files without a meta record 0 (record 0 with flag > 0 and no image, as insightface writes it; e.g.
    sets packed by plain ``im2rec``) are read as "every key in the index is an image".
    ``cache``: keep the parsed index and the labels of a large set in ``cache_dir`` (None: the default
    folder of :mod:`.recordio_cache`, never the data folder); ``cache=False`` reads the set itself each time.
    """

    decode_workers = DECODE_WORKERS  # images are decoded when read: DataLoader workers help

    def __init__(
        self,
        prefix_or_dir: str | os.PathLike[str],
        transform: Callable[[np.ndarray], Any] | None = None,
        *,
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.rec_path, self.idx_path, self.property_path = resolve_recordio_paths(prefix_or_dir)
        if not self.rec_path.is_file():
            raise FileNotFoundError(f"{self.rec_path}: RecordIO data file (.rec) not found")
        if not self.idx_path.is_file():
            raise FileNotFoundError(f"{self.idx_path}: RecordIO index (.idx) not found")
        self.transform = transform
        use_cache = cache and worth_caching(self.idx_path)
        self._cache = RecordIOCache(self.rec_path, self.idx_path, cache_dir) if use_cache else None
        self._keys, self._offsets = self._read_index()
        self._file_size = self.rec_path.stat().st_size
        past_end = np.nonzero(self._offsets > self._file_size - RECORD_HEAD.size)[0]  # no int64 overflow
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

    def _read_index(self) -> tuple[np.ndarray, np.ndarray]:
        cached = self._cache.load("index", ("keys", "offsets")) if self._cache is not None else None
        if cached is not None and cached["keys"].dtype == cached["offsets"].dtype == np.int64:
            return cached["keys"], cached["offsets"]
        keys, offsets = read_index(self.idx_path)
        if self._cache is not None:
            self._cache.store("index", {"keys": keys, "offsets": offsets})
        return keys, offsets

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
            head_size = RECORD_HEAD.size
            wanted = head_size + (limit or 0) if not parts else head_size
            chunk = self._read_at(offset, min(wanted, max(0, self._file_size - offset)))  # a huge limit reads no more
            if len(chunk) < head_size:
                raise DataFormatError(f"{where}: record truncated at byte {offset} (file ends)")
            magic, lrec = RECORD_HEAD.unpack_from(chunk, 0)
            if magic != RECORDIO_MAGIC:
                raise DataFormatError(
                    f"{where}: bad magic 0x{magic:08x} at byte {offset} (expected 0x{RECORDIO_MAGIC:08x}; "
                    f"wrong .idx offset or not a RecordIO file)"
                )
            continuation, length = lrec >> LENGTH_BITS, lrec & LENGTH_MASK
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
                return MAGIC_BYTES.join(parts)
            offset += head_size + ((length + 3) & ~3)

    def read_header(self, key: int) -> RecordHeader:
        """Header of record ``key`` without reading its image."""
        prefix = self.read_payload(key, limit=IMAGE_HEADER.size + 4 * 8)  # room for up to 8 labels
        flag = IMAGE_HEADER.unpack_from(prefix, 0)[0] if len(prefix) >= IMAGE_HEADER.size else 0
        if len(prefix) < IMAGE_HEADER.size + 4 * flag:
            prefix = self.read_payload(key, limit=IMAGE_HEADER.size + 4 * flag)
        return parse_header(prefix, f"{self.rec_path}: key {key}")[0]

    def read_record(self, key: int) -> tuple[RecordHeader, bytes]:
        """Header and encoded image bytes of record ``key``."""
        where = f"{self.rec_path}: key {key}"
        payload = self.read_payload(key)
        header, start = parse_header(payload, where)
        return header, payload[start:]

    def _find_image_keys(self) -> np.ndarray:
        if self._keys[0] == 0:
            meta, rest = self.read_record(0)
            if meta.flag > 0 and not rest:  # a meta record carries no image
                announced = meta.label[0]
                if (not math.isfinite(announced) or announced != int(announced)
                        or not 1 <= announced <= self._keys.size):  # found by fuzzing: nan, inf, 1e30
                    raise DataFormatError(f"{self.rec_path}: key 0: meta record announces {announced - 1:g} images, "
                                          f"but the index has {self._keys.size} keys")
                end = int(announced)
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
        label = class_label(header, where)
        return (self.transform(image) if self.transform is not None else image), label

    @property
    def image_keys(self) -> np.ndarray:
        """RecordIO keys of the images, in dataset order."""
        return self._image_keys

    @property
    def labels(self) -> np.ndarray:
        """int64 identity label of every image, read from the headers only (kept, and cached on disk)."""
        if self._labels is None:
            cached = self._cache.load("labels", ("labels",)) if self._cache is not None else None
            if cached is not None and cached["labels"].shape == (len(self),):
                self._labels = cached["labels"].astype(np.int64)
            else:
                self._labels = self._read_labels()
                if self._cache is not None:
                    self._cache.store("labels", {"labels": self._labels.astype(np.int32)})  # class ids < 2^31
        return self._labels

    def _read_labels(self) -> np.ndarray:
        offsets = self._offsets[np.searchsorted(self._keys, self._image_keys)]
        labels, to_check = gather_labels(self.rec_path, offsets)
        for index in to_check.tolist():  # anything unusual (multi-part, damage) takes the checked path
            key = int(self._image_keys[index])
            labels[index] = class_label(self.read_header(key), f"{self.rec_path}: key {key}")
        return labels

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
