"""insightface RecordIO reader/writer: hand-built bytes, round trips, error cases, DataLoader workers."""
from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corecompress_facekit.data.formats import recordio
from corecompress_facekit.data.formats.errors import DataFormatError
from corecompress_facekit.data.formats.recordio import RecordIODataset, read_index, write_recordio
from corecompress_facekit.data.formats.recordio_format import encode_record

MAGIC_LE = bytes([0x0A, 0x23, 0xD7, 0xCE])  # 0xced7230a little-endian, written out by hand


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def frame(payload: bytes, continuation: int = 0) -> bytes:
    """One record written by hand: magic, lrec (flag in the top 3 bits), payload, zero padding."""
    lrec = (continuation << 29) | len(payload)
    padding = b"\x00" * ((4 - len(payload) % 4) % 4)
    return MAGIC_LE + lrec.to_bytes(4, "little") + payload + padding


def header(flag: int, label: float, record_id: int, record_id2: int = 0) -> bytes:
    return (
        flag.to_bytes(4, "little")
        + struct.pack("<f", label)
        + record_id.to_bytes(8, "little")
        + record_id2.to_bytes(8, "little")
    )


def write_by_hand(folder: Path, records: list[bytes], property_line: str | None = "3,4,5\n") -> None:
    """Concatenate framed records into train.rec and write train.idx with their offsets."""
    folder.mkdir(parents=True, exist_ok=True)
    offsets, data = [], b""
    for record in records:
        offsets.append(len(data))
        data += record
    (folder / "train.rec").write_bytes(data)
    (folder / "train.idx").write_text("".join(f"{key}\t{offset}\n" for key, offset in enumerate(offsets)))
    if property_line is not None:
        (folder / "property").write_text(property_line)


@pytest.fixture()
def tiny_images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (4, 5, 3), dtype=np.uint8) for _ in range(3)]


@pytest.fixture()
def hand_built(tmp_path: Path, tiny_images: list[np.ndarray]) -> Path:
    """Meta record (flag 2, label [3, 3]) + image keys 1, 2 (labels 2 and 0), PNG payloads."""
    meta = header(2, 3.0, 0) + struct.pack("<ff", 3.0, 3.0)
    first = header(0, 2.0, 1) + png_bytes(tiny_images[0])
    second = header(0, 0.0, 2) + png_bytes(tiny_images[1])
    write_by_hand(tmp_path / "ds", [frame(meta), frame(first), frame(second)])
    return tmp_path / "ds"


def test_reads_records_encoded_by_hand(hand_built: Path, tiny_images: list[np.ndarray]) -> None:
    dataset = RecordIODataset(hand_built)
    assert len(dataset) == 2
    assert dataset.image_keys.tolist() == [1, 2]
    image, label = dataset[0]
    assert image.dtype == np.uint8 and image.shape == (4, 5, 3)
    np.testing.assert_array_equal(image, tiny_images[0])
    assert label == 2
    np.testing.assert_array_equal(dataset[1][0], tiny_images[1])
    assert dataset[-1][1] == 0
    assert dataset.labels.tolist() == [2, 0]
    assert dataset.num_classes == 3 and dataset.image_size == (4, 5)
    assert dataset.read_header(2).id == 2
    with pytest.raises(IndexError):
        dataset[2]


def test_label_array_header_uses_first_value(tmp_path: Path, tiny_images: list[np.ndarray]) -> None:
    meta = header(1, 2.0, 0) + struct.pack("<f", 2.0)
    image = header(2, 7.0, 1) + struct.pack("<ff", 7.0, 3.0) + png_bytes(tiny_images[2])
    write_by_hand(tmp_path / "ds", [frame(meta), frame(image)], property_line=None)
    dataset = RecordIODataset(tmp_path / "ds")
    decoded, label = dataset[0]
    assert label == 7
    np.testing.assert_array_equal(decoded, tiny_images[2])
    assert dataset.read_header(1).label == (7.0, 3.0)
    assert dataset.num_classes == 8  # no property file: 1 + largest label
    assert dataset.image_size is None


def test_without_meta_record_every_key_is_an_image(tmp_path: Path, tiny_images: list[np.ndarray]) -> None:
    records = [frame(header(0, float(i), i) + png_bytes(tiny_images[i])) for i in range(3)]
    write_by_hand(tmp_path / "ds", records)
    assert RecordIODataset(tmp_path / "ds").labels.tolist() == [0, 1, 2]
    # label arrays on every record (flag > 0) but record 0 holds an image: still not a meta record
    records = [frame(header(1, 9.0 - i, i) + struct.pack("<f", 9.0 - i) + png_bytes(tiny_images[i])) for i in range(3)]
    write_by_hand(tmp_path / "arrays", records)
    dataset = RecordIODataset(tmp_path / "arrays")
    assert dataset.labels.tolist() == [9, 8, 7]
    np.testing.assert_array_equal(dataset[0][0], tiny_images[0])


def test_writer_bytes_match_the_format_written_out_by_hand(tmp_path: Path, tiny_images: list[np.ndarray]) -> None:
    encoded = [png_bytes(image) for image in tiny_images[:2]]
    write_recordio(tmp_path / "ds", encoded, [5, 5])
    expected = (
        frame(header(2, 3.0, 0) + struct.pack("<ff", 3.0, 4.0))  # meta: 2 images + 1 identity record
        + frame(header(0, 5.0, 1) + encoded[0])
        + frame(header(0, 5.0, 2) + encoded[1])
        + frame(header(2, 1.0, 3) + struct.pack("<ff", 1.0, 3.0))  # identity 5 = keys [1, 3)
    )
    assert (tmp_path / "ds" / "train.rec").read_bytes() == expected
    lengths = [32, 24 + len(encoded[0]), 24 + len(encoded[1])]
    offsets = np.cumsum([0] + [8 + n + (-n % 4) for n in lengths]).tolist()
    keys, idx_offsets = read_index(tmp_path / "ds" / "train.idx")
    assert keys.tolist() == [0, 1, 2, 3] and idx_offsets.tolist() == offsets
    assert (tmp_path / "ds" / "property").read_text().strip() == "6,4,5"


def test_jpeg_round_trip_and_prefix_paths(tmp_path: Path) -> None:
    flat = [np.full((8, 8, 3), value, dtype=np.uint8) for value in (10, 128, 240)]
    write_recordio(tmp_path / "val.rec", flat, [1, 0, 1])
    assert (tmp_path / "val.idx").is_file()
    dataset = RecordIODataset(tmp_path / "val")
    assert dataset.labels.tolist() == [1, 0, 1]
    for index, value in enumerate((10, 128, 240)):
        image, _ = dataset[index]
        assert abs(float(image.mean()) - value) < 2.0  # flat JPEGs decode to (almost) the same grey


def test_labels_do_not_decode_images(hand_built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> None:
        raise AssertionError("labels must not decode images")

    monkeypatch.setattr(recordio, "decode_image_bytes", refuse)
    assert RecordIODataset(hand_built).labels.tolist() == [2, 0]


def test_multi_part_record_is_joined_like_dmlc(tmp_path: Path, tiny_images: list[np.ndarray]) -> None:
    # id = 0xced7230a puts the magic at payload offset 8 (aligned): dmlc splits the record there.
    payload = header(0, 1.0, 0xCED7230A) + png_bytes(tiny_images[0])
    assert payload[8:12] == MAGIC_LE
    meta = frame(header(1, 2.0, 0) + struct.pack("<f", 2.0))
    split = frame(payload[:8], continuation=1) + frame(payload[12:], continuation=3)
    write_by_hand(tmp_path / "hand", [meta, split])
    dataset = RecordIODataset(tmp_path / "hand")
    image, label = dataset[0]
    assert label == 1 and dataset.read_header(1).id == 0xCED7230A
    np.testing.assert_array_equal(image, tiny_images[0])
    # the writer splits the same way
    assert encode_record(payload) == split


def corrupt(folder: Path, position: int, new_bytes: bytes) -> None:
    data = bytearray((folder / "train.rec").read_bytes())
    data[position : position + len(new_bytes)] = new_bytes
    (folder / "train.rec").write_bytes(bytes(data))


def test_truncated_record(hand_built: Path) -> None:
    rec = hand_built / "train.rec"
    _, offsets = read_index(hand_built / "train.idx")
    rec.write_bytes(rec.read_bytes()[: int(offsets[2]) + 20])
    dataset = RecordIODataset(hand_built)
    with pytest.raises(DataFormatError, match=r"train\.rec: key 2: record truncated"):
        dataset[1]
    np.testing.assert_array_equal(dataset[0][1], 2)


def test_wrong_idx_offset_reports_bad_magic(hand_built: Path) -> None:
    keys, offsets = read_index(hand_built / "train.idx")
    lines = [f"{k}\t{o + (4 if k == 1 else 0)}\n" for k, o in zip(keys.tolist(), offsets.tolist())]
    (hand_built / "train.idx").write_text("".join(lines))
    with pytest.raises(DataFormatError, match=r"train\.rec: key 1: bad magic .*wrong \.idx offset"):
        RecordIODataset(hand_built)[0]


def test_bad_magic(hand_built: Path) -> None:
    _, offsets = read_index(hand_built / "train.idx")
    corrupt(hand_built, int(offsets[2]), b"\x00\x00\x00\x00")
    with pytest.raises(DataFormatError, match=r"train\.rec: key 2: bad magic 0x00000000"):
        RecordIODataset(hand_built)[1]


def test_offset_past_end_is_reported_at_open(hand_built: Path) -> None:
    size = (hand_built / "train.rec").stat().st_size
    (hand_built / "train.idx").write_text(f"0\t0\n1\t{size + 100}\n2\t8\n")
    with pytest.raises(DataFormatError, match=r"train\.idx: key 1: offset \d+ is past the end"):
        RecordIODataset(hand_built)


def test_non_image_payload_names_file_and_key(tmp_path: Path) -> None:
    meta = frame(header(1, 2.0, 0) + struct.pack("<f", 2.0))
    write_by_hand(tmp_path / "ds", [meta, frame(header(0, 4.0, 1) + b"this is not a jpeg")])
    dataset = RecordIODataset(tmp_path / "ds")
    assert dataset.labels.tolist() == [4]
    with pytest.raises(DataFormatError, match=r"train\.rec: key 1: payload is not a decodable image"):
        dataset[0]


def test_unsupported_continuation_flag(hand_built: Path) -> None:
    _, offsets = read_index(hand_built / "train.idx")
    data = (hand_built / "train.rec").read_bytes()
    lrec = int.from_bytes(data[int(offsets[1]) + 4 : int(offsets[1]) + 8], "little")
    corrupt(hand_built, int(offsets[1]) + 4, ((2 << 29) | lrec).to_bytes(4, "little"))
    with pytest.raises(DataFormatError, match=r"key 1: unsupported continuation flag 2"):
        RecordIODataset(hand_built)[0]


def test_missing_and_malformed_files(hand_built: Path) -> None:
    (hand_built / "train.idx").write_text("0\t0\n1 oops\n")
    with pytest.raises(DataFormatError, match=r"train\.idx: line 2: expected 'key<TAB>offset'"):
        RecordIODataset(hand_built)
    (hand_built / "train.idx").unlink()
    with pytest.raises(FileNotFoundError, match=r"train\.idx: RecordIO index"):
        RecordIODataset(hand_built)
    (hand_built / "train.rec").unlink()
    with pytest.raises(FileNotFoundError, match=r"train\.rec: RecordIO data file"):
        RecordIODataset(hand_built)


def test_index_with_blank_lines_and_spaces_parses_like_a_clean_one(tmp_path: Path) -> None:
    (tmp_path / "clean.idx").write_text("2\t40\n0\t0\n1\t16\n")
    (tmp_path / "messy.idx").write_text("\n0 0\n\n1\t16\n  2\t40  \n\n")
    for path in (tmp_path / "clean.idx", tmp_path / "messy.idx"):
        keys, offsets = read_index(path)
        assert keys.tolist() == [0, 1, 2] and offsets.tolist() == [0, 16, 40]
    (tmp_path / "dup.idx").write_text("0\t0\n0\t8\n")
    with pytest.raises(DataFormatError, match=r"dup\.idx: key 0 appears more than once"):
        read_index(tmp_path / "dup.idx")


@pytest.mark.parametrize("bad_label", [float("inf"), float("nan"), -1.0, 2.5])
def test_bad_labels_are_reported(tmp_path: Path, tiny_images: list[np.ndarray], bad_label: float) -> None:
    meta = frame(header(1, 2.0, 0) + struct.pack("<f", 2.0))
    write_by_hand(tmp_path / "ds", [meta, frame(header(0, bad_label, 1) + png_bytes(tiny_images[0]))])
    dataset = RecordIODataset(tmp_path / "ds")
    with pytest.raises(DataFormatError, match=r"train\.rec: key 1: label .* is not a non-negative integer"):
        dataset.labels
    with pytest.raises(DataFormatError, match=r"key 1: label"):
        dataset[0]


def test_bad_property_file(hand_built: Path) -> None:
    (hand_built / "property").write_text("many,112\n")
    with pytest.raises(DataFormatError, match=r"property: expected 'num_classes,height,width'"):
        RecordIODataset(hand_built)


def test_pickled_dataset_carries_no_file_handle(hand_built: Path, tiny_images: list[np.ndarray]) -> None:
    dataset = RecordIODataset(hand_built)
    dataset[0]  # opens the file in this process
    assert dataset._handle is not None
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._handle is None
    np.testing.assert_array_equal(clone[1][0], tiny_images[1])


def test_dataloader_workers_read_the_same_items(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (6, 6, 3), dtype=np.uint8) for _ in range(12)]
    labels = [i // 3 for i in range(12)]
    write_recordio(tmp_path / "ds", images, labels, image_format="PNG")
    dataset = RecordIODataset(tmp_path / "ds")
    dataset[0]  # the parent holds an open handle before the workers fork
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=2, num_workers=2, multiprocessing_context="fork", shuffle=False
    )
    seen_images, seen_labels = [], []
    for batch_images, batch_labels in loader:
        seen_images.append(batch_images.numpy())
        seen_labels += batch_labels.tolist()
    np.testing.assert_array_equal(np.concatenate(seen_images), np.stack(images))
    assert seen_labels == labels
