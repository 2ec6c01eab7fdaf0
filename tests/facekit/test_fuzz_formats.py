"""Bad data files, fuzzed (issue 7): damaged RecordIO sets, verification .bin pickles, identity folders,
CelebA lists and LFW pairs.

Property: loading a damaged file and reading every item either works (and yields well-formed items)
or raises ``DataFormatError`` / ``FileNotFoundError`` with one line naming the file — never an
IndexError, struct.error, OverflowError, PIL OSError or UnicodeDecodeError from deep inside a reader.
Through the dataset components and ``corecompress run``: exit 2 with one line, and no run directory
whose status says ``complete``.

Examples are derandomized; ``CORECOMPRESS_FUZZ_RANDOM=1`` and ``CORECOMPRESS_FUZZ_SCALE=10`` search harder.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from corecompress.errors import DataFormatError
from corecompress_facekit.data.formats.celeba import read_celeba_attributes, read_celeba_partition
from corecompress_facekit.data.formats.identity_folders import IdentityFolderDataset
from corecompress_facekit.data.formats.lfw import read_lfw_pairs
from corecompress_facekit.data.formats.recordio import RecordIODataset, write_recordio
from corecompress_facekit.data.formats.verification_bin import load_verification_bin, write_verification_bin

SCALE = float(os.environ.get("CORECOMPRESS_FUZZ_SCALE", "1"))
ALLOWED = (DataFormatError, FileNotFoundError)


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, database=None,
                    derandomize=not os.environ.get("CORECOMPRESS_FUZZ_RANDOM"),
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cc-fuzz-data-") as folder:
        yield Path(folder)


def outcome(load: Callable[[], Any], folder: Path) -> str:
    """Run ``load``; an error must be an allowed type whose message is one line naming a file in ``folder``."""
    try:
        load()
    except ALLOWED as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        assert str(folder) in message, f"the message does not name the file: {message}"
        event(f"error: {type(exc).__name__}")
        return "error"
    event("loaded")
    return "ok"


def encoded(image: np.ndarray, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def rgb(height: int = 6, width: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def check_image(image: Any, size: tuple[int, int] | None = None) -> None:
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    if size is not None:
        assert image.shape[:2] == size


# ------------------------------------------------------------------------------------------ RecordIO
IMAGES = [rgb(seed=i) for i in range(4)]
LABELS = [0, 0, 1, 2]
BIG_NUMBERS = [2**31, 2**32 - 1, 2**63 - 1, 2**63, 2**64 + 5, 10**30]
IDX_TOKENS = st.one_of(st.integers(-5, 5000), st.sampled_from(BIG_NUMBERS), st.sampled_from(
    ["", "x", "1.5", "-0", "0x10", "1e3", "\x00", "１２", "٣", "1_0", " ", "\t\t", "nan"]))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([-1.0, 0.5, 1e30, 3.0, 4.0, 5.0]))

RECORDIO_MUTATIONS = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8)),
    st.tuples(st.just("offset"), st.integers(0, 9), IDX_TOKENS),
    st.tuples(st.just("idx_line"), st.integers(0, 9), st.text(max_size=20)),
    st.tuples(st.just("idx_duplicate"), st.integers(0, 9)),
    st.tuples(st.just("idx_drop"), st.integers(0, 9)),
    st.tuples(st.just("idx_bytes"), st.binary(max_size=60)),
    st.tuples(st.just("property"), st.one_of(st.text(max_size=20),
                                             st.sampled_from(["0,112,112", "3,-1,5", "1,2", "9" * 30 + ",1,1"]))),
    st.tuples(st.just("property_bytes"), st.binary(max_size=20)),
    st.tuples(st.just("delete"), st.sampled_from(["train.rec", "train.idx", "property"])),
    st.tuples(st.just("flag"), st.integers(0, 5), st.one_of(st.integers(0, 12), st.sampled_from([2**31, 2**32 - 1]))),
    st.tuples(st.just("label"), st.integers(0, 5), FLOATS),
    st.tuples(st.just("label_array"), st.integers(0, 5), FLOATS),
    st.tuples(st.just("lrec"), st.integers(0, 5), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("magic"), st.integers(0, 5), st.integers(0, 2**32 - 1)),
)


def record_offsets(folder: Path) -> list[int]:
    """Offsets listed in the (possibly already damaged) index; what cannot be parsed is skipped."""
    tokens = (folder / "train.idx").read_text(errors="replace").split()
    return [int(t) for t in tokens[1::2] if t.isascii() and t.isdigit()]


def apply_recordio_mutation(folder: Path, mutation: tuple) -> None:
    rec, idx = folder / "train.rec", folder / "train.idx"
    kind, *args = mutation
    data = bytearray(rec.read_bytes()) if rec.exists() else bytearray()
    lines = idx.read_text(errors="replace").splitlines() if idx.exists() else []
    fields = {"magic": (0, "<I"), "lrec": (4, "<I"), "flag": (8, "<I"), "label": (12, "<f"), "label_array": (32, "<f")}
    offsets = record_offsets(folder) if idx.exists() and kind in fields else []
    if kind == "truncate":
        rec.write_bytes(bytes(data[: args[0] % (len(data) + 1)]))
    elif kind == "flip" and data:
        for position, value in args[0]:
            data[position % len(data)] = value
        rec.write_bytes(bytes(data))
    elif kind in ("offset", "idx_line", "idx_duplicate", "idx_drop") and lines:
        line = args[0] % len(lines)
        if kind == "offset":
            lines[line] = f"{lines[line].split()[0]}\t{args[1]}"
        elif kind == "idx_line":
            lines[line] = args[1]
        elif kind == "idx_duplicate":
            lines.insert(line, lines[line])
        else:
            del lines[line]
        idx.write_text("\n".join(lines) + "\n", errors="surrogatepass")
    elif kind == "idx_bytes":
        idx.write_bytes(args[0])
    elif kind == "property":
        (folder / "property").write_text(args[0], errors="surrogatepass")
    elif kind == "property_bytes":
        (folder / "property").write_bytes(args[0])
    elif kind == "delete":
        (folder / args[0]).unlink(missing_ok=True)
    elif offsets and kind in fields:  # a header field; label_array = the first value of a label array
        start = offsets[args[0] % len(offsets)]
        field = fields[kind]
        if start + field[0] + 4 <= len(data):
            struct.pack_into(field[1], data, start + field[0], args[1])
            rec.write_bytes(bytes(data))


def read_all_recordio(folder: Path) -> None:
    dataset = RecordIODataset(folder)
    labels = dataset.labels
    assert labels.shape == (len(dataset),) and (labels >= 0).all()
    for index in range(len(dataset)):
        image, label = dataset[index]
        check_image(image)
        assert label == labels[index]
    assert dataset.num_classes >= 0
    dataset.close()


@st.composite
def recordio_set(draw: Any) -> tuple[list[bytes | np.ndarray], str]:
    """Images to pack: the first is a real image (the writer reads its size); others may be any bytes."""
    images: list[bytes | np.ndarray] = [IMAGES[0]]
    for i in range(1, 4):
        images.append(draw(st.one_of(st.just(IMAGES[i]), st.binary(min_size=1, max_size=40),
                                     st.just(encoded(IMAGES[i])[:30]), st.just(encoded(rgb(9, 3), "JPEG")))))
    return images, draw(st.sampled_from(["PNG", "JPEG"]))


@fuzz_settings(120)
@given(packed=recordio_set(), mutations=st.lists(RECORDIO_MUTATIONS, min_size=0, max_size=3))
def test_damaged_recordio_loads_or_fails_cleanly(packed: tuple, mutations: list[tuple]) -> None:
    images, image_format = packed
    with scratch() as folder:
        write_recordio(folder / "set", images, LABELS, image_format=image_format)
        for mutation in mutations:
            apply_recordio_mutation(folder / "set", mutation)
        result = outcome(lambda: read_all_recordio(folder / "set"), folder)
        if not mutations and all(isinstance(image, np.ndarray) for image in images):
            assert result == "ok"  # the undamaged set must load


def test_recordio_findings(tmp_path: Path) -> None:
    """Damage the fuzzer found that crashed the reader (OverflowError, OSError, MemoryError, ValueError)."""
    def fresh(name: str) -> Path:
        write_recordio(tmp_path / name, IMAGES, LABELS, image_format="PNG")
        return tmp_path / name

    cases = {
        "offset beyond int64": (("offset", 1, 10**30), "larger than 2^63"),
        "offset near int64 max": (("offset", 1, 2**63 - 1), "past the end"),
        "meta label nan": (("label_array", 0, float("nan")), "meta record announces nan images"),
        "meta label inf": (("label_array", 0, float("inf")), "meta record announces inf images"),
        "meta label huge": (("label_array", 0, 1e30), "but the index has"),
        "meta label 1e9": (("label_array", 0, 1e9), "but the index has"),
        "image label 1e30": (("label", 1, 1e30), "not a non-negative integer class id"),
    }
    for name, (mutation, expected) in cases.items():
        folder = fresh(name.replace(" ", "_"))
        apply_recordio_mutation(folder, mutation)
        with pytest.raises(DataFormatError, match=expected.replace("^", r"\^")):
            read_all_recordio(folder)
    folder = fresh("huge_flag")  # a label-array length of 2^32-1 must not make the reader ask for 16 GB
    apply_recordio_mutation(folder, ("flag", 1, 2**32 - 1))
    with pytest.raises(DataFormatError, match="label values but the payload is too short"):
        RecordIODataset(folder).read_header(1)


# ------------------------------------------------------------------------------- verification .bin
PNG = encoded(rgb(6, 6, 7))
GREY_JPEG = encoded(rgb(6, 6, 8)[:, :, 0], "JPEG")
BIN_ITEMS = st.one_of(st.just(PNG), st.just(np.frombuffer(PNG, np.uint8)), st.binary(max_size=30), st.just(PNG[:20]),
                      st.just(b""), st.text(max_size=5), st.integers(), st.none(), st.just(np.zeros((2, 2), np.uint8)),
                      st.just(np.frombuffer(PNG, np.uint8).astype(np.int16)), st.just(bytearray(PNG)))
FLAGS = st.one_of(st.booleans(), st.integers(-1, 2), st.just(np.bool_(True)), st.text(max_size=3), st.none(),
                  st.floats(), st.just(np.array([1, 0])))
PICKLABLE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=20), st.text(max_size=10),
              st.just(np.arange(3, dtype=np.uint8)), st.just(np.array(["a"], dtype=object))),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(st.text(max_size=3), inner, max_size=3), st.frozensets(st.integers(), max_size=3)),
    max_leaves=10)
MALICIOUS_GLOBALS = [("os", "system"), ("builtins", "eval"), ("subprocess", "Popen"), ("posix", "system"),
                     ("numpy", "load"), ("numpy.testing", "assert_equal"), ("_codecs", "decode"), ("builtins", "getattr"),
                     ("torch", "load"), ("numpy.core.multiarray", "_reconstruct")]


@st.composite
def bin_payload(draw: Any) -> bytes:
    shape = draw(st.sampled_from(["nearly_valid"] * 3 + ["structured", "random_pickle", "malicious", "valid_damaged", "raw"]))
    protocol = draw(st.integers(0, pickle.HIGHEST_PROTOCOL))
    if shape == "nearly_valid":  # insightface's layout, at most one entry replaced by anything
        pairs = draw(st.integers(0, 3))
        bins = draw(st.lists(st.sampled_from([PNG, np.frombuffer(PNG, np.uint8), bytearray(PNG), GREY_JPEG]),
                             min_size=2 * pairs, max_size=2 * pairs))
        issame = draw(st.lists(st.sampled_from([True, False, 0, 1, np.bool_(False)]), min_size=pairs, max_size=pairs))
        if bins and draw(st.booleans()):
            bins[draw(st.integers(0, len(bins) - 1))] = draw(BIN_ITEMS)
        if issame and draw(st.booleans()):
            issame[draw(st.integers(0, len(issame) - 1))] = draw(FLAGS)
        return pickle.dumps((bins, issame), protocol=protocol)
    if shape == "structured":
        bins = draw(st.lists(BIN_ITEMS, max_size=6))
        issame = draw(st.one_of(st.lists(FLAGS, max_size=4), st.just(np.array([True, False])), FLAGS))
        container = draw(st.sampled_from([tuple, list, lambda *a: {"bins": a[0]}, lambda *a: (a[0], a[1], 0)]))
        return pickle.dumps(container((bins, issame)) if container in (tuple, list) else container(bins, issame),
                            protocol=protocol)
    if shape == "random_pickle":
        return pickle.dumps(draw(PICKLABLE), protocol=protocol)
    if shape == "malicious":
        module, name = draw(st.sampled_from(MALICIOUS_GLOBALS))
        body = f"c{module}\n{name}\n(S'echo fuzz'\ntR.".encode()
        return draw(st.sampled_from([body, b"(" + body[:-1] + b"]p0\n."]))
    valid = pickle.dumps(([PNG, PNG, PNG, PNG], [True, False]), protocol=protocol)
    if shape == "valid_damaged":
        data = bytearray(valid)
        for position, value in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=4)):
            data[position] = value
        return bytes(data[: draw(st.integers(0, len(data)))])
    return draw(st.binary(max_size=200))


def read_all_bin(path: Path) -> None:
    pairs = load_verification_bin(path)
    for index in range(len(pairs)):
        first, second, same = pairs[index]
        check_image(first)
        check_image(second)
        assert isinstance(same, bool)
    pairs.decode_all()


@fuzz_settings(150)
@given(payload=bin_payload())
def test_damaged_verification_bin_loads_or_fails_cleanly(payload: bytes) -> None:
    with scratch() as folder:
        path = folder / "lfw.bin"
        path.write_bytes(payload)
        outcome(lambda: read_all_bin(path), folder)
        assert not (folder / "fuzz").exists()


def test_verification_bin_findings(tmp_path: Path) -> None:
    """A valid file loads; a truncated one, a list where the pair should be, and a global fail cleanly."""
    path = write_verification_bin(tmp_path / "ok.bin", [rgb(seed=i) for i in range(4)], [True, False])
    read_all_bin(path)
    for name, payload, expected in [
        ("truncated", path.read_bytes()[:-7], "not a readable pickle"),
        ("list", pickle.dumps([PNG, PNG, PNG]), "expected a pickled pair"),
        ("global", b"cos\nsystem\n(S'echo fuzz'\ntR.", "unsafe pickle refused"),
        ("bytearray8", b"\x80\x05\x96" + (2**60).to_bytes(8, "little") + b".", "not a readable pickle"),
    ]:
        bad = tmp_path / f"{name}.bin"
        bad.write_bytes(payload)
        with pytest.raises(DataFormatError, match=expected):
            read_all_bin(bad)


# ---------------------------------------------------------------------------------- identity folders
def image_file(kind: str, seed: int) -> tuple[str, bytes]:
    """(file name, content) of one kind of file an identity folder may hold."""
    if kind == "rgb_png":
        return "a.png", encoded(rgb(7, 5, seed))
    if kind == "grey_jpg":
        return "b.jpg", encoded(rgb(9, 9, seed)[:, :, 0], "JPEG")
    if kind == "rgba_png":
        return "c.png", encoded(np.random.default_rng(seed).integers(0, 256, (4, 6, 4), dtype=np.uint8))
    if kind == "png16":
        return "d.png", encoded_mode(Image.fromarray(np.full((5, 5), 40000, np.uint16)), "PNG")
    if kind == "palette_bmp":
        return "e.bmp", encoded_mode(Image.fromarray(rgb(8, 3, seed)).convert("P"), "BMP")
    if kind == "one_bit_tif":
        return "f.tif", encoded_mode(Image.fromarray(rgb(6, 6, seed)).convert("1"), "TIFF")
    if kind == "float_tif":
        return "g.tiff", encoded_mode(Image.fromarray(np.full((3, 3), 2.5, np.float32)), "TIFF")
    if kind == "cmyk_jpg":
        return "h.jpeg", encoded_mode(Image.fromarray(rgb(5, 5, seed)).convert("CMYK"), "JPEG")
    if kind == "wide_webp":
        return "i.webp", encoded(rgb(3, 40, seed), "WEBP")
    if kind == "zero_bytes":
        return "j.jpg", b""
    if kind == "random_bytes":
        return "k.png", np.random.default_rng(seed).bytes(50)
    if kind == "truncated_png":
        return "l.png", encoded(rgb(20, 20, seed))[:60]
    if kind == "huge_header_png":  # IHDR (with a correct CRC) of 100000 x 100000: a decompression bomb
        data = bytearray(encoded(rgb(2, 2, seed)))
        struct.pack_into(">II", data, 16, 100000, 100000)
        struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
        return "m.png", bytes(data)
    if kind == "text":
        return "notes.txt", b"hello"
    if kind == "no_extension":
        return "README", b"x"
    if kind == "hidden":
        return ".DS_Store", b"\x00\x01"
    raise AssertionError(kind)


def encoded_mode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_decompression_bomb_header_is_a_format_error(tmp_path: Path) -> None:
    """Found by fuzzing: PIL's DecompressionBombError (not an OSError) escaped the image readers."""
    from corecompress_facekit.data.formats._images import decode_image_bytes

    name, content = image_file("huge_header_png", 0)
    with pytest.raises(DataFormatError, match="decompression bomb"):
        decode_image_bytes(content, "bomb")
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / name).write_bytes(content)
    with pytest.raises(DataFormatError, match=f"{name}: not a decodable image"):
        IdentityFolderDataset(tmp_path)[0]


FILE_KINDS = ["rgb_png", "grey_jpg", "rgba_png", "png16", "palette_bmp", "one_bit_tif", "float_tif", "cmyk_jpg",
              "wide_webp", "zero_bytes", "random_bytes", "truncated_png", "huge_header_png", "text", "no_extension",
              "hidden"]
READABLE_KINDS = ["rgb_png", "grey_jpg", "rgba_png", "png16", "palette_bmp", "cmyk_jpg", "wide_webp"]
FOLDER = st.one_of(st.just("nested"), st.lists(st.sampled_from(FILE_KINDS + READABLE_KINDS * 6), max_size=3, unique=True))


@fuzz_settings(120)
@given(folders=st.dictionaries(st.sampled_from(["alice", "bob", ".hidden", "carol", "Émile"]), FOLDER, max_size=3),
       root_files=st.lists(st.sampled_from(["LICENSE", "x.png"]), max_size=2, unique=True),
       image_size=st.sampled_from([None, 8, 16]))
def test_identity_folders_load_or_fail_cleanly(folders: dict, root_files: list[str], image_size: int | None) -> None:
    with scratch() as folder:
        root = folder / "root"
        root.mkdir()
        for name in root_files:
            (root / name).write_bytes(b"not part of any identity")
        for number, (identity, files) in enumerate(folders.items()):
            (root / identity).mkdir()
            if files == "nested":
                (root / identity / "sub").mkdir()
                continue
            for kind in files:
                file_name, content = image_file(kind, number)
                (root / identity / file_name).write_bytes(content)

        visible = {k: v for k, v in folders.items() if not k.startswith(".")}

        def load() -> None:
            dataset = IdentityFolderDataset(root, image_size=image_size)
            assert dataset.classes == sorted(visible)  # labels = positions in sorted order, hidden folders skipped
            assert len(dataset) == sum(len([f for f in files if f != "hidden"]) for files in visible.values())
            for index in range(len(dataset)):
                image, label = dataset[index]
                check_image(image, None if image_size is None else (image_size, image_size))
                assert 0 <= label < dataset.num_classes

        result = outcome(load, folder)
        empty = any(isinstance(v, list) and not [f for f in v if f != "hidden"] for v in visible.values())
        if not visible or empty or any(v == "nested" for v in visible.values()):
            assert result == "error"  # an empty identity would silently shift every label after it


# ------------------------------------------------------------------------------------- CelebA lists
NAMES = [f"Attr_{i}" for i in range(40)]


@st.composite
def celeba_text(draw: Any) -> str:
    rows = draw(st.integers(0, 4))
    count = draw(st.one_of(st.just(str(rows)), st.integers(-2, 6).map(str), st.sampled_from(["", "x", "1e2", "٣"])))
    names = NAMES[: draw(st.sampled_from([40, 40, 39, 41, 0]))]
    lines = [count, " ".join(names)]
    for row in range(rows):
        values = [draw(st.sampled_from(["1", "-1", "1", "-1", "0", "2", "", "x", "−1"])) if draw(st.booleans()) and row == 0
                  else ("1" if (row + column) % 2 else "-1") for column in range(draw(st.sampled_from([40, 40, 39, 41])))]
        file_name = draw(st.sampled_from([f"{row:06d}.jpg", "000000.jpg"]))
        lines.append(" ".join([file_name] + values))
    text = "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n", "\r\n"]))
    return draw(st.one_of(st.just(text), st.text(max_size=30)))


@fuzz_settings(120)
@given(attributes=celeba_text(), partition=st.one_of(
    st.lists(st.tuples(st.sampled_from(["000000.jpg", "000001.jpg", "a b.jpg"]),
                       st.sampled_from(["0", "1", "2", "3", "-1", "x", ""])), max_size=4).map(
        lambda rows: "\n".join(" ".join(row) for row in rows)),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1"))))
def test_celeba_lists_load_or_fail_cleanly(attributes: str, partition: str) -> None:
    with scratch() as folder:
        attr_path, part_path = folder / "list_attr_celeba.txt", folder / "list_eval_partition.txt"
        attr_path.write_text(attributes, errors="surrogatepass")
        part_path.write_text(partition, errors="surrogatepass")

        def load_attributes() -> None:
            table = read_celeba_attributes(attr_path)
            assert table.values.shape == (len(table.files), 40) and set(np.unique(table.values)) <= {0, 1}
            assert len(set(table.files)) == len(table.files) and len(table.names) == 40

        def load_partition() -> None:
            assert set(read_celeba_partition(part_path).values()) <= {0, 1, 2}

        outcome(load_attributes, folder)
        outcome(load_partition, folder)


# -------------------------------------------------------------------------------------- LFW pairs
def lfw_lines() -> list[str]:
    return ["2 2", "Ann 1 2", "Bob 3 4", "Ann 1 Bob 2", "Cid 1 Dee 1", "Eve 1 2", "Fay 2 3", "Eve 1 Fay 1", "Gus 4 Hal 1"]


LFW_EDITS = st.one_of(
    st.tuples(st.just("replace"), st.integers(0, 8), st.one_of(st.text(max_size=20), st.sampled_from(
        ["Ann 0 1", "Ann -1 2", "Ann x 2", "Ann 1", "Ann 1 2 3 4 5", "10 300", "0 5", "a b", "1100", "", "Ann 1 Bob",
         "Ann 1 2", "Ann 1 Bob 2", "Ann 01 +2"]))),  # the last three are well-formed lines (wrong place or not)
    st.tuples(st.just("delete"), st.integers(0, 8), st.just("")),
    st.tuples(st.just("insert"), st.integers(0, 8), st.sampled_from(["", "Ann 1 2", "Zed 1 Yan 2"])),
)


@fuzz_settings(120)
@given(edits=st.lists(LFW_EDITS, max_size=2), check_files=st.booleans(), with_images=st.booleans(),
       raw=st.one_of(st.none(), st.none(), st.binary(max_size=60)))
def test_lfw_pairs_load_or_fail_cleanly(edits: list[tuple], check_files: bool, with_images: bool, raw: bytes | None) -> None:
    lines = lfw_lines()
    for kind, line, text in edits:
        position = line % max(1, len(lines))
        if kind == "replace" and lines:
            lines[position] = text
        elif kind == "delete" and lines:
            del lines[position]
        elif kind == "insert":
            lines.insert(position, text)
    with scratch() as folder:
        path = folder / "pairs.txt"
        if raw is not None:
            path.write_bytes(raw)
        else:
            path.write_text("\n".join(lines) + "\n", errors="surrogatepass")
        if with_images:  # every image the unedited file names
            for name, number in [("Ann", 1), ("Ann", 2), ("Bob", 2), ("Bob", 3), ("Bob", 4), ("Cid", 1), ("Dee", 1),
                                 ("Eve", 1), ("Eve", 2), ("Fay", 1), ("Fay", 2), ("Fay", 3), ("Gus", 4), ("Hal", 1)]:
                (folder / "lfw" / name).mkdir(parents=True, exist_ok=True)
                (folder / "lfw" / name / f"{name}_{number:04d}.jpg").write_bytes(b"")

        def load() -> None:
            pairs = read_lfw_pairs(path, folder / "lfw", check_files=check_files)
            assert all(pair.path1.name.endswith(".jpg") and isinstance(pair.issame, bool) for pair in pairs)
            if check_files:
                assert all(pair.path1.is_file() and pair.path2.is_file() for pair in pairs)

        result = outcome(load, folder)
        if raw is None and not edits:
            assert result == ("error" if check_files and not with_images else "ok")


# ------------------------------------------------------------------- through the dataset components
def write_identity_root(root: Path, empty_identity: bool = False) -> None:
    for number, identity in enumerate(["alice", "bob", "carol"]):
        (root / identity).mkdir(parents=True)
        for image in range(2):
            (root / identity / f"{image}.png").write_bytes(encoded(rgb(20, 18, 10 * number + image)))
    if empty_identity:
        (root / "bob_2").mkdir()


def tiny_recipe(data: dict) -> dict:
    return {"version": 1, "name": "fuzz", "threads": 1, "model": {"name": "tiny_vit", "num_outputs": 3},
            "data": {"image_size": 16, **data}, "train": {"steps": 1, "batch_size": 6}}


def folders_recipe(root: Path) -> dict:
    return tiny_recipe({"name": "identity_folders", "root": str(root)})


def run_recipe_cli(cli: Any, folder: Path, recipe: dict) -> tuple[int, str, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    path, out_dir = folder / "recipe.yaml", folder / "run"
    path.write_text(yaml.safe_dump(recipe))
    code, _out, err = cli("run", path, "--out", out_dir, "--quiet")
    assert code in (0, 2), err
    assert "Traceback" not in err, err
    status = json.loads((out_dir / "status.json").read_text()) if (out_dir / "status.json").is_file() else {}
    if code == 2:
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("warning:", "note:"))]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert status.get("state") != "complete", status
    else:
        assert status.get("state") == "complete"
    return code, err, status


def test_identity_folders_component_empty_identity_exit_2(cli: Any, tmp_path: Path) -> None:
    write_identity_root(tmp_path / "ok")
    code, err, _status = run_recipe_cli(cli, tmp_path / "ok_run", folders_recipe(tmp_path / "ok"))
    assert code == 0, err  # the control: the same recipe on an intact folder runs
    write_identity_root(tmp_path / "bad", empty_identity=True)
    code, err, status = run_recipe_cli(cli, tmp_path / "bad_run", folders_recipe(tmp_path / "bad"))
    assert code == 2 and "bob_2: identity folder is empty" in err
    assert status.get("state") == "failed"


@pytest.mark.parametrize("image_size", [0, -3, 10**6])
def test_dataset_image_size_is_checked_when_validating(cli: Any, tmp_path: Path, image_size: int) -> None:
    write_identity_root(tmp_path / "root")
    for data in ({"name": "identity_folders", "root": str(tmp_path / "root")}, {"name": "recordio", "path": str(tmp_path)},
                 {"name": "celeba", "root": str(tmp_path)}):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(tiny_recipe({**data, "image_size": image_size})))
        code, _out, err = cli("run", path, "--out", tmp_path / "run")
        assert code == 2 and "data.image_size: must be in" in err, err
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("options, expected", [
    ({"seed": -1}, "data.seed: must be >= 0"),
    ({"difficulty": float("nan")}, "data.difficulty: expected a number, got nan"),
    ({"difficulty": float("inf")}, "data.difficulty: must be a finite number"),
    ({"eval_pairs": 0}, "data.eval_pairs: must be at least 1"),
    ({"image_size": 10**6}, "data.image_size: must be in [32, 2048]"),
])
def test_synthetic_faces_options_are_checked_when_validating(cli: Any, tmp_path: Path, options: dict, expected: str) -> None:
    """Found by fuzzing: these validated, then SyntheticFaceConfig raised a ValueError (a traceback) mid-run."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe({"name": "synthetic_faces", "image_size": 32, **options})))
    code, _out, err = cli("run", path, "--out", tmp_path / "run")
    assert code == 2 and expected in err, err
    assert not (tmp_path / "run").exists()


@fuzz_settings(8)
@given(mutations=st.lists(RECORDIO_MUTATIONS, min_size=1, max_size=2), packed=recordio_set())
def test_damaged_recordio_through_run(cli: Any, mutations: list[tuple], packed: tuple) -> None:
    """``corecompress run`` on a damaged RecordIO set: complete, or exit 2 with a failed status."""
    images, image_format = packed
    with scratch() as folder:
        write_recordio(folder / "set", images, LABELS, image_format=image_format)
        for mutation in mutations:
            apply_recordio_mutation(folder / "set", mutation)
        code, _err, _status = run_recipe_cli(cli, folder / "out", tiny_recipe({"name": "recordio", "path": str(folder / "set")}))
        event(f"run exit {code}")


@fuzz_settings(8)
@given(files=st.lists(st.sampled_from(FILE_KINDS), min_size=0, max_size=3, unique=True))
def test_damaged_identity_folder_through_run(cli: Any, files: list[str]) -> None:
    with scratch() as folder:
        write_identity_root(folder / "root")
        for kind in files:
            name, content = image_file(kind, 3)
            (folder / "root" / "carol" / name).write_bytes(content)
        code, _err, _status = run_recipe_cli(cli, folder / "out", folders_recipe(folder / "root"))
        event(f"run exit {code}")
        if not set(files) - {"rgb_png", "grey_jpg", "rgba_png", "png16", "palette_bmp", "wide_webp", "hidden", "cmyk_jpg"}:
            assert code == 0  # every file is a readable image: the run must not fail
