"""insightface verification .bin files and the restricted unpickler (malicious pickles never run)."""
from __future__ import annotations

import builtins
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corecompress_facekit.data.formats.errors import DataFormatError
from corecompress_facekit.data.formats.safe_pickle import NUMPY_BYTE_ARRAYS, ForbiddenPickleError, restricted_loads
from corecompress_facekit.data.formats.verification_bin import load_verification_bin, write_verification_bin


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def four_images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (6, 7, 3), dtype=np.uint8) for _ in range(4)]


def test_round_trip_pairs(tmp_path: Path, four_images: list[np.ndarray]) -> None:
    path = write_verification_bin(tmp_path / "lfw.bin", four_images, [True, False], image_format="PNG")
    pairs = load_verification_bin(path)
    assert len(pairs) == 2
    assert pairs.issame.dtype == bool and pairs.issame.tolist() == [True, False]
    first, second, same = pairs[1]
    np.testing.assert_array_equal(first, four_images[2])
    np.testing.assert_array_equal(second, four_images[3])
    assert same is False
    np.testing.assert_array_equal(pairs.decode_all(), np.stack(four_images))
    with pytest.raises(IndexError):
        pairs[2]


def test_python2_style_string_pickle_is_read_as_bytes(tmp_path: Path, four_images: list[np.ndarray]) -> None:
    # Protocol 2 written by hand with BINSTRING ('T'), how Python 2 stored the JPEG str objects.
    data = b"\x80\x02](" + b"".join(b"T" + len(png_bytes(im)).to_bytes(4, "little") + png_bytes(im) for im in four_images)
    data += b"e](\x89\x88e\x86."  # APPENDS, [False, True], TUPLE2, STOP
    (tmp_path / "old.bin").write_bytes(data)
    pairs = load_verification_bin(tmp_path / "old.bin")
    assert pairs.issame.tolist() == [False, True]
    np.testing.assert_array_equal(pairs[0][1], four_images[1])


@pytest.mark.parametrize("protocol", [2, 4])
def test_numpy_byte_arrays_are_allowed(tmp_path: Path, four_images: list[np.ndarray], protocol: int) -> None:
    bins = [np.frombuffer(png_bytes(im), dtype=np.uint8) for im in four_images]
    issame = np.array([True, True])
    (tmp_path / "np.bin").write_bytes(pickle.dumps((bins, issame), protocol=protocol))
    pairs = load_verification_bin(tmp_path / "np.bin")
    assert pairs.issame.tolist() == [True, True]
    np.testing.assert_array_equal(pairs.image(3), four_images[3])


class OpenFile:
    """Unpickling this calls builtins.open(path, 'w'): the file appears if the payload runs."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple:
        return (builtins.open, (self.path, "w"))


class EvalOpen:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple:
        return (builtins.eval, (f"open({self.path!r}, 'w')",))


class SystemTouch:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.path}",))


def test_payload_really_executes_with_the_plain_unpickler(tmp_path: Path) -> None:
    """Control for the test below: the same payload does create its file when unpickled naively."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(OpenFile(marker))).close()
    assert marker.exists()


@pytest.mark.parametrize("payload", [OpenFile, EvalOpen, SystemTouch])
@pytest.mark.parametrize("nested", [False, True])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, payload: type, nested: bool) -> None:
    marker = tmp_path / "pwned"
    evil = payload(marker)
    content = ([b"x", evil], [True]) if nested else evil
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(DataFormatError, match=r"evil\.bin: unsafe pickle refused: refused global"):
        load_verification_bin(tmp_path / "evil.bin")
    assert not marker.exists()


def test_restricted_loads_allow_list() -> None:
    from collections import OrderedDict

    data = pickle.dumps(OrderedDict(a=1))
    with pytest.raises(ForbiddenPickleError, match="collections.OrderedDict"):
        restricted_loads(data)
    assert restricted_loads(data, {("collections", "OrderedDict")}) == OrderedDict(a=1)
    assert restricted_loads(pickle.dumps([1, (b"a", True), {"k": None}, 2.5])) == [1, (b"a", True), {"k": None}, 2.5]


def test_codecs_encode_only_with_latin1() -> None:
    # GLOBAL '_codecs encode', ('abc', 'rot13'), REDUCE: any codec other than latin-1 is refused.
    data = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(ForbiddenPickleError, match="latin-1"):
        restricted_loads(data, NUMPY_BYTE_ARRAYS)
    latin = data.replace(b"X\x05\x00\x00\x00rot13", b"X\x06\x00\x00\x00latin1")
    assert restricted_loads(latin, NUMPY_BYTE_ARRAYS) == b"abc"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (([b"a", b"b", b"c"], [True, False]), "3 images for 2 pairs"),
        (([b"a", b"b"], ["yes"]), r"issame_list\[0\] is 'yes'"),
        (([b"a", 5], [True]), r"bins\[1\] is int"),
        ([b"a"], "expected a pickled pair"),
    ],
)
def test_structural_errors(tmp_path: Path, content: object, message: str) -> None:
    (tmp_path / "bad.bin").write_bytes(pickle.dumps(content))
    with pytest.raises(DataFormatError, match=rf"bad\.bin: .*{message}"):
        load_verification_bin(tmp_path / "bad.bin")


def test_truncated_and_missing_files(tmp_path: Path, four_images: list[np.ndarray]) -> None:
    path = write_verification_bin(tmp_path / "cut.bin", four_images, [True, False])
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DataFormatError, match=r"cut\.bin: not a readable pickle"):
        load_verification_bin(path)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.bin"):
        load_verification_bin(tmp_path / "nowhere.bin")


def test_non_image_entry_names_file_and_index(tmp_path: Path, four_images: list[np.ndarray]) -> None:
    bins = [png_bytes(im) for im in four_images]
    bins[2] = b"garbage"
    (tmp_path / "x.bin").write_bytes(pickle.dumps((bins, [True, False])))
    pairs = load_verification_bin(tmp_path / "x.bin")
    with pytest.raises(DataFormatError, match=r"x\.bin: image 2: payload is not a decodable image"):
        pairs[1]
