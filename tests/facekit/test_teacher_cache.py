"""teacher_cache target: cached = live teacher (plain and mirrored), second prepare skips the teacher, keys."""
from __future__ import annotations

import logging
import types
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from corecompress import hookimpl
from corecompress.plugin.loading import load_plugins
from corecompress_facekit.targets import (
    CacheFileError, CacheUnsafeError, TeacherCache, TeacherCacheOptions, cache_key, register_targets,
)


@dataclass
class FakeOptions:
    seed: int = 0
    size: int = 10


class FaceSet(torch.utils.data.Dataset):
    """Deterministic images per index (no random augmentation)."""

    def __init__(self, options: FakeOptions) -> None:
        self.options = options

    def __len__(self) -> int:
        return self.options.size

    def __getitem__(self, index: int) -> dict:
        gen = torch.Generator().manual_seed(self.options.seed * 1000 + index)
        return {"image": torch.randn(3, 6, 6, generator=gen), "label": index % 3, "index": index}


class CountingTeacher(nn.Module):
    """A small conv net that is not mirror-symmetric; counts forward calls."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))
        self.eval()                                             # frozen teachers run in eval mode
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


def ctx():
    return SimpleNamespace(log=logging.getLogger("test"), device=torch.device("cpu"), data=None)


def prepared(teacher, dataset, directory: Path, **options) -> TeacherCache:
    cache = TeacherCache(TeacherCacheOptions(dir=str(directory), batch_size=4, **options))
    cache.prepare(teacher, dataset, ctx())
    return cache


def test_cached_embeddings_equal_live_teacher_plain_and_flipped(tmp_path: Path) -> None:
    teacher, data = CountingTeacher(), FaceSet(FakeOptions())
    cache = prepared(teacher, data, tmp_path)
    assert cache.computed and cache.path.parent == tmp_path and cache.path.suffix == ".safetensors"
    index = torch.tensor([3, 0, 9, 3])
    flipped = torch.tensor([True, False, True, False])
    images = torch.stack([data[i]["image"] for i in index.tolist()])
    images[flipped] = images[flipped].flip(-1)                  # what the training loop feeds the teacher
    with torch.no_grad():
        live = teacher(images)
    got = cache({"index": index, "flipped": flipped})
    assert not teacher.training and not teacher.net[1].training
    assert got.dtype == torch.float32 and got.shape == (4, 5)
    assert torch.allclose(got, live, atol=1e-5)
    assert not torch.allclose(got[0], got[3], atol=1e-3)        # same image, mirrored vs not
    plain = cache({"index": index})                             # no flip mask: all plain
    with torch.no_grad():
        assert torch.allclose(plain, teacher(torch.stack([data[i]["image"] for i in index.tolist()])), atol=1e-5)


def test_second_prepare_reads_without_running_the_teacher(tmp_path: Path) -> None:
    teacher, data = CountingTeacher(), FaceSet(FakeOptions())
    first = prepared(teacher, data, tmp_path)
    calls = teacher.calls
    assert calls == 2 * 3                                       # 10 images in batches of 4, plain + mirrored
    second = prepared(teacher, data, tmp_path)
    assert teacher.calls == calls and not second.computed
    batch = {"index": torch.arange(10), "flipped": torch.arange(10) % 2 == 0}
    assert torch.equal(first(batch), second(batch))


def test_key_changes_with_teacher_weights_and_dataset(tmp_path: Path) -> None:
    teacher, data = CountingTeacher(), FaceSet(FakeOptions())
    key = cache_key(teacher, data)
    assert cache_key(CountingTeacher(), FaceSet(FakeOptions())) == key        # same weights, same data
    with torch.no_grad():
        teacher.net[4].bias[0] += 1e-3
    assert cache_key(teacher, data) != key
    assert cache_key(CountingTeacher(), FaceSet(FakeOptions(seed=1))) != key
    assert cache_key(CountingTeacher(), FaceSet(FakeOptions(size=9))) != key
    changed = prepared(teacher, data, tmp_path)
    assert changed.computed and changed.path.stem != key


def test_random_augmentation_is_refused(tmp_path: Path) -> None:
    data = FaceSet(FakeOptions())
    data.augmented = True
    with pytest.raises(CacheUnsafeError, match="declares random augmentation"):
        prepared(CountingTeacher(), data, tmp_path)


def test_default_directory_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORECOMPRESS_CACHE", str(tmp_path / "cc"))
    cache = TeacherCache(TeacherCacheOptions(batch_size=8))
    cache.prepare(CountingTeacher(), FaceSet(FakeOptions(size=3)), ctx())
    assert cache.path.parent == tmp_path / "cc" / "teacher" and cache.path.is_file()


def test_float16_storage_and_damaged_file(tmp_path: Path) -> None:
    teacher, data = CountingTeacher(), FaceSet(FakeOptions(size=4))
    cache = prepared(teacher, data, tmp_path, dtype="float16")
    assert cache.plain.dtype == torch.float16
    with torch.no_grad():
        live = teacher(data[2]["image"][None])
    assert torch.allclose(cache({"index": torch.tensor([2])}), live, atol=1e-2)
    cache.path.write_bytes(b"broken")
    with pytest.raises(CacheFileError, match="unreadable teacher cache"):
        prepared(teacher, data, tmp_path, dtype="float16")
    with pytest.raises(IndexError):
        cache({"index": torch.tensor([4])})


def test_registered_through_an_in_process_plugin(tmp_path: Path) -> None:
    plugin = types.ModuleType("face_targets_test")
    plugin.register_targets = hookimpl(lambda register: register_targets(register))
    registry = load_plugins(autoload=False, extra=[("face_targets_test", plugin)]).registry
    component = registry.get("target", "teacher_cache")
    target = component.create(component.parse({"dir": str(tmp_path), "dtype": "float16"}, "train.target"))
    assert isinstance(target, TeacherCache) and target.options.dtype == "float16"
