"""``num_workers: auto`` and the loader settings: what auto resolves to, and that workers change no batch."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Subset, default_collate

from corecompress.config.options import parse_options
from corecompress.config.recipe import TrainSection
from corecompress.engine import data_loaders as settings_module
from corecompress.engine.data_loaders import (
    MAX_AUTO_WORKERS, PREFETCH_FACTOR, loader_settings, resolve_workers, wanted_workers,
)
from corecompress.engine.training import _batches
from corecompress.errors import DataFormatError, RecipeError


class InMemory:
    def __len__(self) -> int:
        return 4


class Decoding(InMemory):
    def __init__(self, wants: int = 8) -> None:
        self.decode_workers = wants


@pytest.mark.parametrize(("dataset", "cpus", "local_world", "expected"), [
    (InMemory(), 64, 1, 0),                      # in memory: no workers, however many CPUs
    (Decoding(), 16, 1, 8),                      # the dataset's want
    (Decoding(), 2, 1, 1),                       # one CPU stays with the main process
    (Decoding(), 1, 1, 1),                       # but a decoding set always gets one
    (Decoding(64), 128, 1, MAX_AUTO_WORKERS),    # the cap
    (Decoding(), 16, 4, 3),                      # torchrun: 16 CPUs / 4 local ranks, less the main process
    (Subset(Decoding(), [0, 1]), 16, 1, 8),      # wrappers are looked through
    (Decoding(0), 16, 1, 0),
])
def test_auto_resolves_as_documented(dataset: Any, cpus: int, local_world: int, expected: int) -> None:
    assert resolve_workers("auto", dataset, cpus=cpus, local_world=local_world) == expected


def test_auto_divides_by_the_local_world_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "available_cpus", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resolve_workers("auto", Decoding()) == 7
    assert resolve_workers(5, Decoding()) == 5  # an integer is used as it is


def test_face_readers_declare_decoding(tmp_path: Path) -> None:
    from corecompress_facekit.data.formats.recordio import RecordIODataset, write_recordio
    from corecompress_facekit.datasets import FaceSamples, SyntheticFacesData, SyntheticFacesOptions

    write_recordio(tmp_path / "ds", [np.zeros((8, 8, 3), np.uint8)] * 2, [0, 1])
    assert wanted_workers(FaceSamples(RecordIODataset(tmp_path / "ds"))) == 8
    synthetic = SyntheticFacesData(SyntheticFacesOptions(identities=2, images_per_identity=1, eval_identities=2,
                                                         eval_images_per_identity=2, eval_pairs=1))
    assert wanted_workers(synthetic.train()) == 0


def test_loader_settings_pin_on_cuda_only_and_prefetch_with_workers() -> None:
    assert loader_settings(InMemory(), "auto", torch.device("cpu")) == {"num_workers": 0, "pin_memory": False}
    assert loader_settings(InMemory(), 0, "cuda")["pin_memory"] is True
    with_workers = loader_settings(InMemory(), 2, None, persistent=False)
    assert with_workers == {"num_workers": 2, "pin_memory": False, "persistent_workers": False,
                            "prefetch_factor": PREFETCH_FACTOR}


def test_recipe_num_workers_default_auto_and_integers() -> None:
    assert parse_options(TrainSection, {"steps": 1}, "train").num_workers == "auto"
    assert parse_options(TrainSection, {"steps": 1, "num_workers": 3}, "train").num_workers == 3
    with pytest.raises(RecipeError, match=r"train\.num_workers: must be at least 0"):
        parse_options(TrainSection, {"steps": 1, "num_workers": -1}, "train")
    with pytest.raises(RecipeError, match=r"train\.num_workers: expected int \| 'auto', got"):
        parse_options(TrainSection, {"steps": 1, "num_workers": "many"}, "train")


def test_two_workers_give_the_batches_of_none(tmp_path: Path) -> None:
    """RecordIO JPEGs written by the project's writer (20x20, resized to 16), through the training loop's
    own loader: whole-batch reads in 2 workers equal those in this process and the collated samples."""
    from corecompress_facekit.data.formats.recordio import RecordIODataset, write_recordio
    from corecompress_facekit.datasets import FaceSamples

    rng = np.random.default_rng(5)
    smooth = [np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((5, 5, 1))).astype(np.uint8) for _ in range(22)]
    write_recordio(tmp_path / "ds", smooth, [i % 5 for i in range(22)])
    dataset = FaceSamples(RecordIODataset(tmp_path / "ds"), size=16)

    def first_batches(workers: int) -> list[dict[str, Any]]:
        section = TrainSection(steps=1, batch_size=8, num_workers=workers)
        batches, _lo, _hi = _batches(dataset, section, seed=3, start_step=1, global_batch=8, rank=0, world=1)
        return [next(batches) for _ in range(4)]  # past an epoch (2 batches of 8 per epoch)

    plain, parallel = first_batches(0), first_batches(2)
    for a, b in zip(plain, parallel):
        collated = default_collate([dataset[int(i)] for i in a["index"]])  # what the per-sample path gives
        assert a.keys() == b.keys() == collated.keys()
        for key in a:
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], collated[key]), key
            assert a[key].dtype == collated[key].dtype and a[key].stride() == collated[key].stride(), key
    assert not torch.equal(plain[0]["index"], plain[2]["index"])  # the epochs differ; the workers do not


class Damaged(Decoding):
    def __getitem__(self, index: int) -> dict[str, Any]:
        if index == 3:
            raise DataFormatError("set/train.rec: key 4: empty image payload")
        return {"image": torch.zeros(2), "label": 0, "index": index}


def test_a_users_error_in_a_worker_keeps_its_one_line() -> None:
    section = TrainSection(steps=1, batch_size=4, num_workers=1)
    batches, _lo, _hi = _batches(Damaged(), section, seed=0, start_step=0, global_batch=4, rank=0, world=1)
    with pytest.raises(DataFormatError) as caught:
        next(batches)
    assert str(caught.value) == "set/train.rec: key 4: empty image payload"
