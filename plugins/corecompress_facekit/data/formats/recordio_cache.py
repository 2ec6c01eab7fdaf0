"""A cache of what a RecordIO set's start-up reads: the parsed ``.idx`` and the label of every image.

Parsing the text index of a 5.8 M-image set and reading its 5.8 M record headers takes seconds; both
are kept in ``<dir>/<key>.<part>.npz`` (parts ``index`` and ``labels``), where ``dir`` is the
``cache_dir`` asked for, by default ``$CORECOMPRESS_CACHE/recordio`` or ``~/.cache/corecompress/recordio``
— never the data's own folder unless the user names it. ``key`` is a hash of the absolute path, size
and modification time (ns) of both the ``.rec`` and the ``.idx``, so a changed file gets a new key and
its old entries are simply not read again.

Only sets whose ``.idx`` has at least ``MIN_INDEX_BYTES`` (1 MiB, about 60,000 records) are cached:
a smaller one is parsed in milliseconds, and caching it would only add files.

Files are written to a temporary name and renamed (a crash leaves no half file) and hold a CRC-32 of
their arrays; a file that cannot be read or does not match is ignored with a :class:`CacheWarning` and
rebuilt. A cache folder that cannot be written (read-only, full) gives one warning and the set is read
uncached. Loaded with ``numpy.load(allow_pickle=False)``: no code can come from a cache file.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
import zlib
from pathlib import Path

import numpy as np

from corecompress.cache_dirs import cache_dir

__all__ = ["CACHE_FORMAT", "CacheWarning", "MIN_INDEX_BYTES", "RecordIOCache", "default_recordio_cache_dir",
           "worth_caching"]

CACHE_FORMAT = "recordio_cache/1"
MIN_INDEX_BYTES = 1 << 20


class CacheWarning(UserWarning):
    """A cache file was ignored (damaged) or the cache folder could not be written."""


def default_recordio_cache_dir() -> Path:
    return cache_dir("recordio")


def worth_caching(idx_path: Path) -> bool:
    """True for an index large enough that reading it from the cache saves time."""
    return idx_path.stat().st_size >= MIN_INDEX_BYTES


def _checksum(arrays: dict[str, np.ndarray]) -> int:
    crc = 0
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        crc = zlib.crc32(f"{name}|{array.dtype.str}|{array.shape}".encode(), crc)
        crc = zlib.crc32(memoryview(array).cast("B"), crc)
    return crc


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


class RecordIOCache:
    """The cache entries of one (``.rec``, ``.idx``) pair; ``directory=None``: the default folder."""

    def __init__(self, rec_path: Path, idx_path: Path, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else default_recordio_cache_dir()
        digest = hashlib.sha256(CACHE_FORMAT.encode())
        for path in (rec_path, idx_path):
            digest.update(_file_identity(path).encode() + b"\n")
        self.key = digest.hexdigest()[:32]
        self.writable = True  # false after a failed write: one warning, then no more tries

    def path(self, part: str) -> Path:
        return self.directory / f"{self.key}.{part}.npz"

    def load(self, part: str, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
        """The arrays of ``part`` when a valid entry exists; None (with a warning if one was damaged) otherwise."""
        path = self.path(part)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in names}
                expected = int(stored["checksum"])
        except Exception as exc:  # noqa: BLE001 - any damage means: rebuild
            warnings.warn(f"{path}: damaged RecordIO cache ignored and rebuilt ({type(exc).__name__})", CacheWarning,
                          stacklevel=3)
            return None
        if _checksum(arrays) != expected:
            warnings.warn(f"{path}: RecordIO cache fails its checksum; ignored and rebuilt", CacheWarning, stacklevel=3)
            return None
        return arrays

    def store(self, part: str, arrays: dict[str, np.ndarray]) -> None:
        """Write ``part`` atomically; on failure warn once and stay uncached."""
        if not self.writable:
            return
        path = self.path(part)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as handle:
                np.savez(handle, checksum=np.uint32(_checksum(arrays)), **arrays)
            os.replace(temporary, path)
        except OSError as exc:
            self.writable = False
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            warnings.warn(f"{self.directory}: cannot write the RecordIO cache ({exc.strerror or exc}); "
                          "reading the set uncached", CacheWarning, stacklevel=3)
