"""Dataset components of the face plugin: training samples as dicts, and named evaluation sets.

Training samples: ``{"image": float (3,H,W) in [-1, 1], "label": int, "index": int[, "attributes": float (40,)]}``.
Evaluation sets are :class:`PairSet` (verification pairs over an image set) or :class:`AttributeSet`.
Images are normalised (x/255 − 0.5)/0.5 as every face-recognition paper here does; flips are the
training loop's job (``augment: flip``), so cached teacher embeddings stay valid. The training loop
alone may read :meth:`FaceSamples.uint8_view` (uint8 images, normalised on its device, bit for bit the same).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from corecompress.errors import UserError


def _prepared(image: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 HxWx3 at ``size``: grey repeated to RGB, resized when its height differs."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if size is not None and image.shape[0] != size:
        from corecompress_facekit.data.formats._images import resize_exact

        image = resize_exact(image, size)
    return image


def _to_tensor(image: np.ndarray, size: int | None) -> torch.Tensor:
    from corecompress_facekit.data.transforms import normalize_to_tensor

    return normalize_to_tensor(_prepared(image, size))


class FaceSamples(Dataset):
    """Wraps a reader returning ``(uint8 image, label[, attributes])`` into normalised dict samples.

    ``cache=True`` keeps decoded/rendered images in memory after first use (synthetic faces are
    rendered once, not every epoch). ``decode_workers`` (what ``num_workers: auto`` asks for) is the
    source's: readers that decode images want workers, in-memory sources none. ``batch(indices)`` is
    the collated batch of those samples, bit for bit, built in one buffer (the training loader's read).
    """

    def __init__(self, source: Any, size: int | None = None, cache: bool = False,
                 identity: str = "") -> None:
        self.source, self.size, self.cache = source, size, cache
        self._images: dict[int, torch.Tensor] = {}
        self.cache_identity = identity or f"{type(source).__name__}:{len(source)}:{size}"

    @property
    def decode_workers(self) -> int:
        return int(getattr(self.source, "decode_workers", 0))

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.source[index]
        image = self._images.get(index) if self.cache else None
        if image is None:
            image = _to_tensor(np.asarray(item[0]), self.size)
            if self.cache:
                self._images[index] = image
        sample = {"image": image, "label": int(item[1]), "index": int(index)}
        if len(item) > 2 and item[2] is not None:
            sample["attributes"] = torch.as_tensor(np.asarray(item[2]), dtype=torch.float32)
        return sample

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """``default_collate([self[i] for i in indices])``, without a tensor per image and a stacking copy."""
        from corecompress_facekit.data.transforms import normalize_batch

        if self.cache:  # the cached tensors are the samples
            return default_collate([self[i] for i in indices])
        return _whole_batch(self, indices, normalize_batch) or default_collate([self[i] for i in indices])

    def uint8_view(self) -> tuple[Dataset, Callable[[torch.Tensor], torch.Tensor]] | None:
        """For the training loader: ``(view, normalize)``, where ``view`` has these samples with uint8
        3xHxW images, un-normalised, and ``normalize`` maps a collated uint8 image batch (on any device)
        to exactly this dataset's float batch. None when the images are cached float tensors.
        This dataset itself is unchanged: teacher caches, calibration and evaluators get floats."""
        from corecompress_facekit.data.transforms import normalize_uint8_batch

        return None if self.cache else (_Uint8Samples(self), normalize_uint8_batch)


def _whole_batch(samples: FaceSamples, indices: Sequence[int],
                 images: Callable[[list[np.ndarray]], torch.Tensor]) -> dict[str, Any] | None:
    """The collated batch of ``samples`` at ``indices`` with ``images(prepared uint8 HxWx3 images)`` as its
    images; None for a mix of samples with and without attributes (collating refuses it, with its own message)."""
    items = [samples.source[i] for i in indices]
    has_attributes = {len(item) > 2 and item[2] is not None for item in items}
    if len(has_attributes) > 1:
        return None
    batch = {"image": images([_prepared(np.asarray(item[0]), samples.size) for item in items]),
             "label": torch.tensor([int(item[1]) for item in items], dtype=torch.int64),
             "index": torch.tensor([int(i) for i in indices], dtype=torch.int64)}
    if has_attributes == {True}:
        batch["attributes"] = torch.stack([torch.as_tensor(np.asarray(item[2]), dtype=torch.float32)
                                           for item in items])
    return batch


class _Uint8Samples(Dataset):
    """:meth:`FaceSamples.uint8_view`'s view: the samples of ``samples`` with uint8 3xHxW images."""

    def __init__(self, samples: FaceSamples) -> None:
        self.samples = samples

    @property
    def decode_workers(self) -> int:
        return self.samples.decode_workers

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.samples.source[index]
        image = np.ascontiguousarray(_prepared(np.asarray(item[0]), self.samples.size))
        sample = {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                  "label": int(item[1]), "index": int(index)}
        if len(item) > 2 and item[2] is not None:
            sample["attributes"] = torch.as_tensor(np.asarray(item[2]), dtype=torch.float32)
        return sample

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """The collated uint8 samples at ``indices``, built in one buffer."""
        from corecompress_facekit.data.transforms import uint8_batch

        return _whole_batch(self.samples, indices, uint8_batch) or default_collate([self[i] for i in indices])


@dataclass
class PairSet:
    """Verification pairs: ``images`` (dict samples), ``pairs`` (N, 2) indices into it, ``issame`` (N,)."""

    images: Dataset
    pairs: np.ndarray
    issame: np.ndarray


@dataclass
class AttributeSet:
    """Images with 40 CelebA attribute labels; ``mask`` marks the attributes that are really labelled."""

    images: Dataset
    mask: np.ndarray
    names: Sequence[str]


class _Images(Dataset):
    """A list of uint8 images as dict samples (for verification .bin / Olivetti sets);
    ``decode_workers``: workers ``num_workers: auto`` gives it (0: ``get`` reads memory)."""

    def __init__(self, get: Callable[[int], np.ndarray], count: int, size: int | None, decode_workers: int = 0) -> None:
        self.get, self.count, self.size, self.decode_workers = get, count, size, decode_workers

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": _to_tensor(np.asarray(self.get(index)), self.size), "label": -1, "index": index}


def verification_bins(paths: Sequence[str], size: int | None) -> dict[str, PairSet]:
    """insightface .bin files (restricted unpickler) as pair sets named by file stem."""
    from corecompress_facekit.data.formats.verification_bin import load_verification_bin

    sets = {}
    for p in paths:
        try:
            vp = load_verification_bin(p)
        except (ValueError, FileNotFoundError) as exc:
            raise UserError(f"data.verification_bins: {str(exc).splitlines()[0]}") from None
        n = len(vp.issame)
        images = _Images(vp.image, 2 * n, size, vp.decode_workers)
        sets[Path(p).stem] = PairSet(images, np.arange(2 * n).reshape(n, 2), np.asarray(vp.issame, bool))
    return sets


def _existing(name: str, value: str | None) -> None:
    if value is not None and not Path(value).exists():
        raise ValueError(f"{name}: no such file or folder: {value}")


MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 2048


def _check_image_size(size: int, low: int = MIN_IMAGE_SIZE) -> None:
    """Found by fuzzing: 0 or a negative size failed deep in PIL during training; a huge one exhausts memory."""
    if not low <= size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image_size: must be in [{low}, {MAX_IMAGE_SIZE}], got {size}")


# --- synthetic faces (the embedded default) --------------------------------------------------------

@dataclass
class SyntheticFacesOptions:
    identities: int = field(default=200, metadata={"help": "training identities (classes)"})
    images_per_identity: int = 20
    eval_identities: int = field(default=50, metadata={"help": "held-out identities for evaluation"})
    eval_images_per_identity: int = 6
    eval_pairs: int = field(default=1000, metadata={"help": "verification pairs on held-out identities"})
    image_size: int = 112
    difficulty: float = 1.0
    seed: int = 0
    cache: bool = field(default=True, metadata={"help": "render each image once and keep it in memory"})

    def __post_init__(self) -> None:
        if self.identities < 2 or self.eval_identities < 2:
            raise ValueError("identities: need at least 2 training and 2 evaluation identities")
        if self.images_per_identity < 1 or self.eval_images_per_identity < 2:
            raise ValueError("eval_images_per_identity: need at least 2 images per held-out identity")
        _check_image_size(self.image_size, 32)
        if self.eval_pairs < 1:
            raise ValueError("eval_pairs: must be at least 1")
        if not 0 <= self.difficulty < float("inf"):
            raise ValueError(f"difficulty: must be a finite number >= 0, got {self.difficulty}")
        if self.seed < 0:
            raise ValueError(f"seed: must be >= 0, got {self.seed}")


class SyntheticFacesData:
    """Procedurally rendered faces (no download): training identities, and held-out identities for
    verification pairs and attribute evaluation. See docs/synthetic_faces.md."""

    def __init__(self, options: SyntheticFacesOptions) -> None:
        from corecompress_facekit.data.synthetic import SyntheticFaceConfig, SyntheticFaces

        o = self.options = options
        self.num_classes = o.identities
        self._train = SyntheticFaces(SyntheticFaceConfig(num_identities=o.identities, images_per_identity=o.images_per_identity,
                                                         image_size=o.image_size, seed=o.seed, difficulty=o.difficulty))
        self._eval = SyntheticFaces(SyntheticFaceConfig(num_identities=o.eval_identities,
                                                        images_per_identity=o.eval_images_per_identity,
                                                        image_size=o.image_size, seed=o.seed, difficulty=o.difficulty,
                                                        identity_offset=o.identities))
        self._train_samples = FaceSamples(self._train, cache=o.cache, identity=f"synthetic_faces:{o!r}:train")
        self._eval_samples = FaceSamples(self._eval, cache=o.cache, identity=f"synthetic_faces:{o!r}:eval")

    def train(self) -> Dataset:
        return self._train_samples

    def evaluation(self) -> dict[str, Any]:
        rows = self._eval.pairs(self.options.eval_pairs, seed=self.options.seed)
        return {"synthetic": PairSet(self._eval_samples, rows[:, :2], rows[:, 2].astype(bool)),
                "synthetic_attributes": AttributeSet(self._eval_samples, self._eval.attribute_mask,
                                                     self._eval.rendered_attributes)}


# --- Olivetti (real faces, read from a path) -------------------------------------------------------

@dataclass
class OlivettiOptions:
    path: str = field(default="../shared/data/olivetti/olivettifaces.mat", metadata={"help": "olivettifaces.mat"})
    train_identities: int = field(default=30, metadata={"help": "people 0..n-1 train; the rest are held out"})
    image_size: int = 64
    impostor_pairs: int = field(default=450, metadata={"help": "impostor pairs sampled beside all genuine pairs"})

    def __post_init__(self) -> None:
        _existing("path", self.path)
        _check_image_size(self.image_size)
        if self.impostor_pairs < 0:
            raise ValueError("impostor_pairs: must be >= 0")
        if not 1 <= self.train_identities <= 38:
            raise ValueError("train_identities: must be in [1, 38] (40 people, 2 held out at least)")


class OlivettiData:
    """AT&T/Olivetti faces (credit: AT&T Laboratories Cambridge): identities 0..n−1 for training, the
    rest for verification (all genuine pairs + seeded impostor pairs, interleaved so folds are balanced)."""

    def __init__(self, options: OlivettiOptions) -> None:
        from corecompress_facekit.data.formats.olivetti import load_olivetti

        self.options = options
        try:
            images, labels = load_olivetti(options.path)
        except (ValueError, FileNotFoundError, ImportError) as exc:
            raise UserError(f"data.path: {str(exc).splitlines()[0]}") from None
        self.images, self.labels = images, labels
        train = labels < options.train_identities
        self.num_classes = options.train_identities
        self._train_idx, self._eval_idx = np.flatnonzero(train), np.flatnonzero(~train)

    def train(self) -> Dataset:
        idx = self._train_idx
        source = [(self.images[i], int(self.labels[i])) for i in idx]
        return FaceSamples(source, self.options.image_size, cache=True,
                           identity=f"olivetti:{self.options.train_identities}:{self.options.image_size}")

    def evaluation(self) -> dict[str, Any]:
        idx, labels = self._eval_idx, self.labels[self._eval_idx]
        n = len(idx)
        i, j = np.triu_indices(n, 1)
        same = labels[i] == labels[j]
        genuine = np.stack([i[same], j[same]], 1)
        rng = np.random.default_rng(0)
        diff = np.stack([i[~same], j[~same]], 1)
        impostor = diff[rng.choice(len(diff), size=min(self.options.impostor_pairs, len(diff)), replace=False)]
        k = min(len(genuine), len(impostor))
        pairs = np.empty((2 * k, 2), np.int64)
        pairs[0::2], pairs[1::2] = genuine[:k], impostor[:k]
        issame = np.tile([True, False], k)
        images = _Images(lambda t: self.images[idx[t]], n, self.options.image_size)
        return {"olivetti": PairSet(images, pairs, issame)}


# --- user data on disk ------------------------------------------------------------------------------

@dataclass
class RecordIOOptions:
    path: str = field(metadata={"help": "folder or prefix of train.rec/train.idx/property"})
    image_size: int = 112
    verification_bins: list[str] = field(default_factory=list, metadata={"help": "lfw.bin, cfp_fp.bin, ..."})
    cache: bool = field(default=True, metadata={"help": "cache the parsed index and the labels of a large set"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "index/label cache folder; null = $CORECOMPRESS_CACHE/recordio or ~/.cache/corecompress/recordio"})

    def __post_init__(self) -> None:
        _check_image_size(self.image_size)
        for p in self.verification_bins:
            _existing("verification_bins", p)


class RecordIOData:
    """insightface RecordIO training sets (MS1MV2, CASIA-WebFace, Glint360K …), read without mxnet."""

    def __init__(self, options: RecordIOOptions) -> None:
        from corecompress_facekit.data.formats.recordio import RecordIODataset

        self.options = options
        try:
            self._source = RecordIODataset(options.path, cache=options.cache, cache_dir=options.cache_dir)
        except (ValueError, FileNotFoundError) as exc:
            raise UserError(f"data.path: {str(exc).splitlines()[0]}") from None
        self.num_classes = int(self._source.num_classes)

    def train(self) -> Dataset:
        return FaceSamples(self._source, self.options.image_size, identity=f"recordio:{self.options.path}")

    def evaluation(self) -> dict[str, Any]:
        return verification_bins(self.options.verification_bins, self.options.image_size)


@dataclass
class IdentityFoldersOptions:
    root: str = field(metadata={"help": "root/<identity>/<image>"})
    image_size: int = 112
    verification_bins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _existing("root", self.root)
        _check_image_size(self.image_size)


class IdentityFoldersData:
    """One folder per identity; the label is the folder's index in sorted order."""

    def __init__(self, options: IdentityFoldersOptions) -> None:
        from corecompress_facekit.data.formats.identity_folders import IdentityFolderDataset

        self.options = options
        try:
            self._source = IdentityFolderDataset(options.root, image_size=options.image_size)
        except (ValueError, FileNotFoundError) as exc:
            raise UserError(f"data.root: {str(exc).splitlines()[0]}") from None
        self.num_classes = int(self._source.num_classes)

    def train(self) -> Dataset:
        return FaceSamples(self._source, None, identity=f"folders:{self.options.root}:{self.options.image_size}")

    def evaluation(self) -> dict[str, Any]:
        return verification_bins(self.options.verification_bins, self.options.image_size)


@dataclass
class CelebAOptions:
    root: str = field(metadata={"help": "folder with img_align_celeba/ and the attribute/partition lists"})
    image_size: int = 112

    def __post_init__(self) -> None:
        _existing("root", self.root)
        _check_image_size(self.image_size)


class CelebAData:
    """CelebA attributes (official split): train split for training, test split for evaluation."""

    def __init__(self, options: CelebAOptions) -> None:
        from corecompress_facekit.data.formats.celeba import CelebADataset

        self.options = options
        try:
            self._train = CelebADataset(options.root, "train", image_size=options.image_size)
            self._test = CelebADataset(options.root, "test", image_size=options.image_size)
        except (ValueError, FileNotFoundError) as exc:
            raise UserError(f"data.root: {str(exc).splitlines()[0]}") from None
        self.num_classes = 0

    def train(self) -> Dataset:
        return _CelebASamples(self._train)

    def evaluation(self) -> dict[str, Any]:
        from corecompress_facekit.data.synthetic import CELEBA_ATTRIBUTES

        return {"celeba": AttributeSet(_CelebASamples(self._test), np.ones(40, bool), CELEBA_ATTRIBUTES)}


class _CelebASamples(Dataset):
    def __init__(self, source: Any) -> None:
        self.source = source
        self.decode_workers = int(getattr(source, "decode_workers", 0))

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, attributes = self.source[index]
        return {"image": _to_tensor(np.asarray(image), None), "label": -1, "index": index,
                "attributes": torch.as_tensor(np.asarray(attributes), dtype=torch.float32)}


def register(register: Any) -> None:
    register("synthetic_faces", SyntheticFacesData, SyntheticFacesOptions, description="procedural faces, no download (default)")
    register("olivetti", OlivettiData, OlivettiOptions, description="AT&T/Olivetti faces from the .mat file")
    register("recordio", RecordIOData, RecordIOOptions, description="insightface train.rec/.idx (+ .bin verification sets)")
    register("identity_folders", IdentityFoldersData, IdentityFoldersOptions, description="root/<identity>/<image>")
    register("celeba", CelebAData, CelebAOptions, description="CelebA attributes, official split")
