"""RecordIO start-up: labels gathered from a memory map equal the checked per-record path, and the
index/label cache hits, misses, invalidates, survives damage and an unwritable folder, outside the data."""
from __future__ import annotations

import os
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from corecompress_facekit.data.formats import recordio_cache
from corecompress_facekit.data.formats.errors import DataFormatError
from corecompress_facekit.data.formats.identity_folders import IdentityFolderDataset
from corecompress_facekit.data.formats.recordio import RecordIODataset, write_recordio
from corecompress_facekit.data.formats.recordio_cache import CacheWarning, RecordIOCache
from corecompress_facekit.data.formats.recordio_labels import gather_labels
from corecompress_facekit.data.formats.verification_bin import load_verification_bin, write_verification_bin


@pytest.fixture()
def small_set(tmp_path: Path) -> Path:
    """30 tiny PNG images, labels 0..9 with a gap (no label 4), as the project's writer packs them."""
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (6, 6, 3), dtype=np.uint8) for _ in range(30)]
    labels = [(i // 3) + (i // 12) for i in range(30)]
    write_recordio(tmp_path / "data", images, labels, image_format="PNG")
    return tmp_path / "data"


@pytest.fixture()
def cache_every_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recordio_cache, "MIN_INDEX_BYTES", 0)  # the test sets are tiny


def checked_labels(dataset: RecordIODataset) -> list[int]:
    return [dataset.read_header(int(key)).label[0] for key in dataset.image_keys]


def test_gathered_labels_equal_the_checked_path(small_set: Path) -> None:
    dataset = RecordIODataset(small_set, cache=False)
    assert dataset.labels.tolist() == checked_labels(dataset)
    assert dataset.labels.dtype == np.int64


def test_unusual_records_take_the_checked_path(tmp_path: Path) -> None:
    payload = struct.pack("<IfQQ", 2, 0.0, 1, 0) + struct.pack("<ff", 7.0, 9.0) + b"x" * 8  # label array [7, 9]
    plain = struct.pack("<IfQQ", 0, 5.0, 2, 0) + b"y" * 8
    rec = b"".join(struct.pack("<II", 0xCED7230A, len(p)) + p + b"\0" * (-len(p) % 4) for p in (payload, plain))
    (tmp_path / "a.rec").write_bytes(rec + b"\0" * 3)  # a length that is not a multiple of 4
    offsets = np.array([0, 8 + len(payload), 2, len(rec) - 4])  # fine, fine, misaligned, past the end
    labels, to_check = gather_labels(tmp_path / "a.rec", offsets)
    assert labels[:2].tolist() == [7, 5] and to_check.tolist() == [2, 3]


def test_damaged_label_is_still_reported(small_set: Path) -> None:
    dataset = RecordIODataset(small_set, cache=False)
    offset = int(dataset._offsets[np.searchsorted(dataset._keys, 5)])
    data = bytearray((small_set / "train.rec").read_bytes())
    data[offset + 12:offset + 16] = struct.pack("<f", 2.5)
    (small_set / "train.rec").write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match=r"key 5: label 2\.5 is not a non-negative integer"):
        RecordIODataset(small_set, cache=False).labels


def test_cache_miss_then_hit_without_reading_the_set(small_set: Path, tmp_path: Path, cache_every_set: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first = RecordIODataset(small_set, cache_dir=cache)
    expected = first.labels.tolist()
    assert sorted(p.name.split(".")[1] for p in cache.iterdir()) == ["index", "labels"]

    from corecompress_facekit.data.formats import recordio

    def refuse(*_args: object) -> None:
        raise AssertionError("a cache hit must not parse the index or gather labels")

    monkeypatch.setattr(recordio, "read_index", refuse)
    monkeypatch.setattr(recordio, "gather_labels", refuse)
    second = RecordIODataset(small_set, cache_dir=cache)
    assert second.labels.tolist() == expected and second.labels.dtype == np.int64
    np.testing.assert_array_equal(second[7][0], first[7][0])


def test_changed_file_invalidates_the_cache(small_set: Path, tmp_path: Path, cache_every_set: None) -> None:
    cache = tmp_path / "cache"
    RecordIODataset(small_set, cache_dir=cache).labels
    rng = np.random.default_rng(4)
    write_recordio(small_set, [rng.integers(0, 256, (6, 6, 3), dtype=np.uint8) for _ in range(5)], [4, 3, 2, 1, 0],
                   image_format="PNG")
    stat = (small_set / "train.rec").stat()
    os.utime(small_set / "train.rec", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a coarse clock is no excuse
    assert RecordIODataset(small_set, cache_dir=cache).labels.tolist() == [4, 3, 2, 1, 0]
    assert len(list(cache.glob("*.labels.npz"))) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped byte"])
def test_damaged_cache_file_is_ignored_with_a_warning_and_rebuilt(small_set: Path, tmp_path: Path,
                                                                   cache_every_set: None, damage: str) -> None:
    cache = tmp_path / "cache"
    expected = RecordIODataset(small_set, cache_dir=cache).labels.tolist()
    path = next(cache.glob("*.labels.npz"))
    data = bytearray(path.read_bytes())
    if damage == "garbage":
        data = bytearray(b"not a cache file")
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[-200] ^= 0xFF  # inside the label array (the zip directory is at the end, ~100 bytes)
    path.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="ignored and rebuilt"):
        assert RecordIODataset(small_set, cache_dir=cache).labels.tolist() == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt: the next start is a clean hit
        assert RecordIODataset(small_set, cache_dir=cache).labels.tolist() == expected


def test_unwritable_cache_folder_warns_once_and_runs_uncached(small_set: Path, tmp_path: Path,
                                                              cache_every_set: None) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("a file where the cache folder should be")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = RecordIODataset(small_set, cache_dir=blocked / "cache")
        assert dataset.labels.tolist() == checked_labels(dataset)
    messages = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert len(messages) == 1 and "cannot write the RecordIO cache" in messages[0], messages


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions and a non-root user")
def test_read_only_cache_folder_warns_once(small_set: Path, tmp_path: Path, cache_every_set: None) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        with pytest.warns(CacheWarning, match="cannot write") as caught:
            RecordIODataset(small_set, cache_dir=read_only).labels
        assert len([w for w in caught if issubclass(w.category, CacheWarning)]) == 1
        assert list(read_only.iterdir()) == []
    finally:
        read_only.chmod(0o700)


def test_default_cache_is_outside_the_data_folder(small_set: Path, tmp_path: Path, cache_every_set: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORECOMPRESS_CACHE", str(tmp_path / "root"))
    before = sorted(p.name for p in small_set.iterdir())
    RecordIODataset(small_set).labels
    assert sorted(p.name for p in small_set.iterdir()) == before
    assert len(list((tmp_path / "root" / "recordio").glob("*.npz"))) == 2
    assert RecordIOCache(small_set / "train.rec", small_set / "train.idx").directory == tmp_path / "root" / "recordio"


def test_small_sets_are_not_cached(small_set: Path, tmp_path: Path) -> None:
    RecordIODataset(small_set, cache_dir=tmp_path / "cache").labels
    assert not (tmp_path / "cache").exists()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_readers_pickle_without_open_handles(small_set: Path, tmp_path: Path) -> None:
    before = open_descriptors()
    dataset = RecordIODataset(small_set, cache=False)  # reads the meta record: opens this process's handle
    assert open_descriptors() == before + 1
    dataset.labels  # maps the .rec and closes the map
    assert open_descriptors() == before + 1
    image = dataset[3][0]  # opens this process's handle
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._handle is None and clone._handle_pid is None
    np.testing.assert_array_equal(clone[3][0], image)
    dataset.close()
    clone.close()
    assert open_descriptors() == before

    folder = tmp_path / "folders" / "alice"
    folder.mkdir(parents=True)
    from PIL import Image

    Image.fromarray(image).save(folder / "a.png")
    folders = IdentityFolderDataset(tmp_path / "folders", image_size=None)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(folders))[0][0], folders[0][0])
    pairs = load_verification_bin(write_verification_bin(tmp_path / "v.bin", [image, image], [True], image_format="PNG"))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(pairs)).image(1), image)
    assert open_descriptors() == before
