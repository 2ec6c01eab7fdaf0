"""``header: class_means``: a teacher header built from the teacher's class means (no trained classifier)."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from corecompress_facekit.losses import LossConfigError
from corecompress_distill_baselines.header import class_mean_header
from corecompress_distill_baselines.header_distill import ArcDistillOptions, HeaderDistill
from corecompress_distill_baselines.hinton import HintonKD, HintonKDOptions

LABELS = [0, 1, 2, 0, 1, 2, 0, 2, 2, 1]                     # 3 classes, unequal counts (3, 3, 4)


class Images(torch.utils.data.Dataset):
    def __init__(self, labels=LABELS, augmented: bool = False) -> None:
        self.labels, self.augmented = list(labels), augmented
        self.cache_identity = f"images:{self.labels}"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        gen = torch.Generator().manual_seed(100 + index)
        return {"image": torch.randn(3, 6, 6, generator=gen), "label": self.labels[index], "index": index}


class TinyTeacher(nn.Module):
    """A 4-d embedder; counts forward calls."""

    embedding_size = 4

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 4))
        self.calls = 0
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


def make_ctx(teacher=None, dataset=None, num_classes: int = 3):
    dataset = dataset if dataset is not None else Images()
    return SimpleNamespace(
        data=SimpleNamespace(num_classes=num_classes, train=lambda: dataset),
        model_spec=SimpleNamespace(embedding_size=4, input_size=(3, 6, 6)), teacher=teacher, state={},
        recipe=SimpleNamespace(seed=0), log=logging.getLogger("test"), device=torch.device("cpu"))


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CORECOMPRESS_CACHE", str(tmp_path))
    return tmp_path / "teacher"


def hand_means(teacher: nn.Module, dataset: Images) -> torch.Tensor:
    rows = []
    with torch.no_grad():
        for k in range(3):
            units = []
            for i in range(len(dataset)):
                if dataset[i]["label"] == k:
                    e = teacher(dataset[i]["image"][None])[0]
                    units.append(e / e.norm())
            mean = torch.stack(units).mean(0)
            rows.append(mean / mean.norm())
    return torch.stack(rows)


def test_class_means_header_by_hand(cache_dir: Path) -> None:
    teacher, dataset = TinyTeacher(), Images()
    loss = HeaderDistill(ArcDistillOptions(header="class_means", s=4.0, m=0.3))
    loss.setup(make_ctx(teacher, dataset))
    header = loss.teacher_header
    assert header.shape == (3, 4)                              # one row per class
    assert torch.allclose(header.norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.allclose(header, hand_means(teacher, dataset), atol=1e-5)
    assert len(list(cache_dir.glob("*.safetensors"))) == 1    # through the teacher_cache target's file

    teacher.calls = 0                                          # a second set-up reads the cache
    hinton = HintonKD(HintonKDOptions(header="class_means"))
    hinton.setup(make_ctx(teacher, dataset))
    assert teacher.calls == 0 and torch.allclose(hinton.teacher_header, header, atol=1e-6)
    parts = hinton(torch.randn(4, 4), {"label": torch.tensor([0, 1, 2, 0])}, torch.randn(4, 4))
    assert torch.isfinite(parts["loss"])


def test_class_mean_header_function() -> None:
    emb = torch.tensor([[2.0, 0.0], [0.0, 5.0], [0.0, -1.0], [3.0, 3.0]])
    header = class_mean_header(emb, torch.tensor([0, 0, 1, 1]), 2)
    assert torch.allclose(header[0], F.normalize(torch.tensor([0.5, 0.5]), dim=0))
    assert torch.allclose(header[1], F.normalize(torch.tensor([0.5 ** 0.5, 0.5 ** 0.5 - 1]) / 2, dim=0))
    with pytest.raises(LossConfigError, match="class 2 has no training image"):
        class_mean_header(emb, torch.tensor([0, 0, 1, 1]), 3)


def test_class_means_errors() -> None:
    options = ArcDistillOptions(header="class_means")
    with pytest.raises(LossConfigError, match="needs a teacher"):
        HeaderDistill(options).setup(make_ctx(None))
    with pytest.raises(LossConfigError, match="un-augmented"):
        HeaderDistill(options).setup(make_ctx(TinyTeacher(), Images(augmented=True)))
    with pytest.raises(LossConfigError, match="class 3 has no training image"):
        HeaderDistill(options).setup(make_ctx(TinyTeacher(), num_classes=4))
