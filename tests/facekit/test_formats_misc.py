"""LFW pairs.txt, CelebA lists + images, identity folders and the real Olivetti faces."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corecompress_facekit.data.formats.celeba import CelebADataset, read_celeba_attributes, read_celeba_partition
from corecompress_facekit.data.formats.errors import DataFormatError
from corecompress_facekit.data.formats.identity_folders import IdentityFolderDataset
from corecompress_facekit.data.formats.lfw import read_lfw_pairs
from corecompress_facekit.data.formats.olivetti import OLIVETTI_SHA256, load_olivetti

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_data() -> Path:
    return Path(os.environ.get("CORECOMPRESS_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


# ----------------------------------------------------------------------------- LFW
PAIRS_2x2 = """2\t2
Abel_Pacheco\t1\t4
Akhmed_Zakayev\t1\t3
Abdel_Madi_Shabneh\t1\tDean_Barker\t1
Abdel_Madi_Shabneh\t1\tGiancarlo_Fisichella\t1
Bob\t2\t10
Carl\t1\t2
Ann\t3\tZed\t12
Ann\t1\tBob\t1
"""


def test_lfw_pairs_parse(tmp_path: Path) -> None:
    (tmp_path / "pairs.txt").write_text(PAIRS_2x2)
    pairs = read_lfw_pairs(tmp_path / "pairs.txt")
    assert len(pairs) == 8
    assert [p.issame for p in pairs] == [True, True, False, False] * 2
    assert [p.fold for p in pairs] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert pairs[0].path1 == tmp_path / "lfw" / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg"
    assert pairs[0].path2 == tmp_path / "lfw" / "Abel_Pacheco" / "Abel_Pacheco_0004.jpg"
    assert pairs[4].path2.name == "Bob_0010.jpg"
    assert pairs[6].path1.name == "Ann_0003.jpg" and pairs[6].path2 == tmp_path / "lfw" / "Zed" / "Zed_0012.jpg"


def test_lfw_one_number_header_and_custom_root(tmp_path: Path) -> None:
    (tmp_path / "pairsDevTrain.txt").write_text("1\nAnn 1 2\nAnn 1 Bob 2\n")
    pairs = read_lfw_pairs(tmp_path / "pairsDevTrain.txt", tmp_path / "images")
    assert [(p.issame, p.fold) for p in pairs] == [(True, 0), (False, 0)]
    assert pairs[1].path2 == tmp_path / "images" / "Bob" / "Bob_0002.jpg"


def test_lfw_check_files(tmp_path: Path) -> None:
    (tmp_path / "pairs.txt").write_text("1\nAnn 1 2\nAnn 1 Bob 2\n")
    (tmp_path / "lfw" / "Ann").mkdir(parents=True)
    (tmp_path / "lfw" / "Ann" / "Ann_0001.jpg").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"Ann_0002\.jpg: LFW image not found .*pairs\.txt line 2"):
        read_lfw_pairs(tmp_path / "pairs.txt", check_files=True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 1\nAnn 1 Bob 2\nAnn 1 Bob 2\n", r"line 2: fold 1 expects 'name n1 n2'"),
        ("1 1\nAnn 1 2\nAnn 1 2\n", r"line 3: fold 1 expects 'name1 n1 name2 n2'"),
        ("1 1\nAnn 1 x\nAnn 1 Bob 2\n", r"line 2: image number 'x'"),
        ("1 1\nAnn 1 0\nAnn 1 Bob 2\n", r"line 2: image number '0'"),
        ("2 1\nAnn 1 2\nAnn 1 Bob 2\n", r"header announces 2 folds x 2 pairs = 4 lines, found 2"),
        ("ten 300\n", r"line 1: expected a header"),
    ],
)
def test_lfw_malformed(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "pairs.txt").write_text(text)
    with pytest.raises(DataFormatError, match=rf"pairs\.txt: {message}"):
        read_lfw_pairs(tmp_path / "pairs.txt")


# ----------------------------------------------------------------------------- CelebA
NAMES = [f"Attr_{i}" for i in range(40)]


def celeba_root(tmp_path: Path, names: list[str] = NAMES) -> tuple[Path, np.ndarray]:
    """Five 178x218 JPEGs, attributes v[i, j] = 1 when (i + j) % 3 == 0 else -1, partition 0,0,1,2,2."""
    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(5)
    values = np.where((np.arange(5)[:, None] + np.arange(len(names))[None]) % 3 == 0, 1, -1)
    lines = [str(5), " ".join(names)]
    for i in range(5):
        name = f"{i + 1:06d}.jpg"
        pixels = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "img_align_celeba" / name, quality=90)
        lines.append(name + "  " + " ".join(f"{v:2d}" for v in values[i]))
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{i + 1:06d}.jpg {part}\n" for i, part in enumerate([0, 0, 1, 2, 2]))
    )
    return root, (values == 1).astype(np.uint8)


def test_celeba_attributes_and_splits(tmp_path: Path) -> None:
    root, expected = celeba_root(tmp_path)
    table = read_celeba_attributes(root / "list_attr_celeba.txt")
    assert table.names == NAMES and table.files[0] == "000001.jpg"
    np.testing.assert_array_equal(table.values, expected)
    assert read_celeba_partition(root / "list_eval_partition.txt")["000003.jpg"] == 1
    test = CelebADataset(root, split="test")
    assert test.files == ["000004.jpg", "000005.jpg"]
    image, target = test[1]
    assert image.shape == (112, 112, 3) and image.dtype == np.uint8
    assert target.dtype == np.float32
    np.testing.assert_array_equal(target, expected[4].astype(np.float32))
    assert len(CelebADataset(root, split="train")) == 2 and len(CelebADataset(root, split="val")) == 1


def test_celeba_crop_matches_torchvision(tmp_path: Path) -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    root, _ = celeba_root(tmp_path)
    image, _ = CelebADataset(root, split="val")[0]
    with Image.open(root / "img_align_celeba" / "000003.jpg") as source:
        reference = transforms.CenterCrop(112)(transforms.Resize(112)(source.convert("RGB")))
    np.testing.assert_array_equal(image, np.asarray(reference))


def test_celeba_lists_in_official_subfolders(tmp_path: Path) -> None:
    root, _ = celeba_root(tmp_path)
    (root / "Anno").mkdir()
    (root / "Eval").mkdir()
    (root / "list_attr_celeba.txt").rename(root / "Anno" / "list_attr_celeba.txt")
    (root / "list_eval_partition.txt").rename(root / "Eval" / "list_eval_partition.txt")
    assert len(CelebADataset(root, split="test")) == 2


def test_celeba_wrong_attribute_count(tmp_path: Path) -> None:
    root, _ = celeba_root(tmp_path, names=NAMES[:39])
    with pytest.raises(DataFormatError, match=r"list_attr_celeba\.txt: line 2: expected 40 attribute names, found 39"):
        CelebADataset(root)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda lines: ["6"] + lines[1:], r"line 1 announces 6 images, found 5"),
        (lambda lines: ["five"] + lines[1:], r"line 1: expected the image count"),
        (lambda lines: lines[:2] + [lines[2].replace("-1", "0", 1)] + lines[3:], r"line 3: attribute Attr_\d+ is '0'"),
        (lambda lines: lines[:3] + [lines[3].rsplit(" ", 1)[0]] + lines[4:], r"line 4: expected a file name and 40 values"),
    ],
)
def test_celeba_malformed_attribute_list(tmp_path: Path, edit, message: str) -> None:  # noqa: ANN001
    root, _ = celeba_root(tmp_path)
    path = root / "list_attr_celeba.txt"
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    with pytest.raises(DataFormatError, match=rf"list_attr_celeba\.txt: {message}"):
        read_celeba_attributes(path)


def test_celeba_bad_partition_and_missing_folder(tmp_path: Path) -> None:
    root, _ = celeba_root(tmp_path)
    (root / "list_eval_partition.txt").write_text("000001.jpg 3\n")
    with pytest.raises(DataFormatError, match=r"list_eval_partition\.txt: line 1: expected '<file> 0\|1\|2'"):
        CelebADataset(root)
    with pytest.raises(FileNotFoundError, match=r"img_align_celeba: CelebA image folder not found"):
        CelebADataset(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="split"):
        CelebADataset(root, split="dev")


# ----------------------------------------------------------------------------- identity folders
def make_identity_root(tmp_path: Path) -> Path:
    root = tmp_path / "ids"
    for identity, values in (("carol", [30]), ("alice", [10, 11]), ("bob", [20])):
        (root / identity).mkdir(parents=True)
        for n, value in enumerate(values):
            Image.fromarray(np.full((20, 16, 3), value, np.uint8)).save(root / identity / f"{n}.png")
    Image.fromarray(np.full((8, 8), 99, np.uint8)).save(root / "bob" / "grey.PNG")  # grey, upper-case suffix
    (root / "alice" / ".DS_Store").write_bytes(b"junk")
    (root / ".hidden_identity").mkdir()
    (root / "README.txt").write_text("not an identity")
    return root


def test_identity_folders_labels_and_images(tmp_path: Path) -> None:
    dataset = IdentityFolderDataset(make_identity_root(tmp_path), image_size=12)
    assert dataset.classes == ["alice", "bob", "carol"] and dataset.num_classes == 3
    assert dataset.labels.tolist() == [0, 0, 1, 1, 2]
    values = []
    for index in range(len(dataset)):
        image, _ = dataset[index]
        assert image.shape == (12, 12, 3) and image.dtype == np.uint8
        values.append(int(image[0, 0, 0]))
    assert values == [10, 11, 20, 99, 30]  # flat images keep their value through the resize


def test_identity_folders_keep_size_when_asked(tmp_path: Path) -> None:
    image, label = IdentityFolderDataset(make_identity_root(tmp_path), image_size=None)[4]
    assert image.shape == (20, 16, 3) and label == 2


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: (root / "dave").mkdir(), r"dave: identity folder is empty"),
        (lambda root: (root / "bob" / "notes.txt").write_text("x"), r"notes\.txt: not an image file"),
        (lambda root: (root / "bob" / "more").mkdir(), r"more: nested folder inside identity 'bob'"),
    ],
)
def test_identity_folder_errors(tmp_path: Path, damage, message: str) -> None:  # noqa: ANN001
    root = make_identity_root(tmp_path)
    damage(root)
    with pytest.raises(DataFormatError, match=message):
        IdentityFolderDataset(root)


def test_identity_folder_corrupt_image_and_missing_root(tmp_path: Path) -> None:
    root = make_identity_root(tmp_path)
    (root / "bob" / "0.png").write_bytes(b"not a png")
    dataset = IdentityFolderDataset(root)
    with pytest.raises(DataFormatError, match=r"bob/0\.png: not a decodable image"):
        dataset[2]
    with pytest.raises(FileNotFoundError, match="identity-folder root not found"):
        IdentityFolderDataset(tmp_path / "absent")


# ----------------------------------------------------------------------------- Olivetti (real file)
@pytest.fixture(scope="module")
def olivetti() -> tuple[np.ndarray, np.ndarray]:
    path = shared_data() / "olivetti" / "olivettifaces.mat"
    if not path.is_file():
        pytest.skip(f"Olivetti faces missing: {path}")
    return load_olivetti(path, sha256=OLIVETTI_SHA256)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_olivetti_shapes_and_identities(olivetti: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = olivetti
    assert images.shape == (400, 64, 64) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [i // 10 for i in range(400)]
    assert int(images.max()) <= 242


def test_olivetti_faces_are_upright(olivetti: tuple[np.ndarray, np.ndarray]) -> None:
    """Faces are left-right symmetric: an upright face correlates with its mirror far more than with its
    upside-down copy. A row-major (transposed) reshape would swap the two."""
    images = olivetti[0].astype(np.float64)
    mirror = np.mean([correlation(im, im[:, ::-1]) for im in images])
    upside_down = np.mean([correlation(im, im[::-1]) for im in images])
    assert mirror > upside_down + 0.2
    # and not upside down: the forehead (top rows) is brighter than the chin/neck/background (bottom rows)
    assert images[:, :8].mean() > images[:, -8:].mean() + 20


def test_olivetti_same_person_is_closer(olivetti: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = olivetti
    flat = images.reshape(400, -1).astype(np.float64)
    squared = (flat * flat).sum(1)
    distances = squared[:, None] + squared[None] - 2 * flat @ flat.T
    same = labels[:, None] == labels[None]
    off_diagonal = ~np.eye(400, dtype=bool)
    assert distances[same & off_diagonal].mean() < 0.6 * distances[~same].mean()


def test_olivetti_checksum_and_missing_file(tmp_path: Path, olivetti: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(DataFormatError, match="sha256 .* does not match"):
        load_olivetti(shared_data() / "olivetti" / "olivettifaces.mat", sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match=r"faces\.mat: Olivetti faces file"):
        load_olivetti(tmp_path / "faces.mat")
