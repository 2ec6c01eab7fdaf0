"""uint8 training batches normalised on the device: bit for bit the float batches they replace — alone,
through the training loop's loader (0 and 2 workers, flips on), and as the weights of a short run."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from corecompress.config.recipe import TrainSection
from corecompress.engine import training
from corecompress.engine.training import _batches, _to_device, _train_view, flip_half


def smooth_faces(count: int, seed: int = 5) -> list[np.ndarray]:
    """20x20 RGB images, smooth enough for JPEG to keep a spread of values."""
    rng = np.random.default_rng(seed)
    return [np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((5, 5, 1))).astype(np.uint8) for _ in range(count)]


def test_uint8_batch_normalised_equals_the_float_batch_for_all_values() -> None:
    from corecompress_facekit.data.transforms import normalize_batch, normalize_uint8_batch, uint8_batch

    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    images = [ramp, np.ascontiguousarray(ramp[::-1, ::-1]), np.full((16, 16, 3), 7, np.uint8)]
    raw = uint8_batch(images)
    assert raw.dtype == torch.uint8 and raw.shape == (3, 3, 16, 16) and raw.is_contiguous()
    ours, theirs = normalize_uint8_batch(raw), normalize_batch(images)
    assert ours.dtype == theirs.dtype and ours.stride() == theirs.stride()
    assert torch.equal(ours.view(torch.int32), theirs.view(torch.int32))  # the bits, not just the values
    with pytest.raises(ValueError, match="expected a uint8 Nx3xHxW batch"):
        normalize_uint8_batch(ours)


@pytest.fixture(scope="module")
def recordio_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from corecompress_facekit.data.formats.recordio import write_recordio

    folder = tmp_path_factory.mktemp("u8") / "ds"
    write_recordio(folder, smooth_faces(22), [i % 5 for i in range(22)])
    return folder


@pytest.mark.parametrize("workers", [0, 2])
def test_training_loader_reads_uint8_and_normalises_to_the_old_batches(recordio_set: Path, workers: int) -> None:
    from corecompress_facekit.data.formats.recordio import RecordIODataset
    from corecompress_facekit.datasets import FaceSamples

    dataset = FaceSamples(RecordIODataset(recordio_set), size=16)
    read, normalize = _train_view(dataset)
    assert read is not dataset and normalize is not None
    assert dataset[0]["image"].dtype == torch.float32  # other readers of the dataset still get floats
    section = TrainSection(steps=1, batch_size=8, num_workers=workers)
    old, _lo, _hi = _batches(dataset, section, seed=3, start_step=1, global_batch=8, rank=0, world=1)
    new, _lo, _hi = _batches(read, section, seed=3, start_step=1, global_batch=8, rank=0, world=1)
    for step in range(4):  # past an epoch
        raw = next(new)
        assert raw["image"].dtype == torch.uint8 and raw["image"].shape == (8, 3, 16, 16)
        a, b = _to_device(next(old), torch.device("cpu")), _to_device(raw, torch.device("cpu"), normalize)
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and a[key].stride() == b[key].stride(), key
            assert torch.equal(a[key], b[key]), key
        assert torch.equal(a["image"].view(torch.int32), b["image"].view(torch.int32))
        flipped_a, mask_a = flip_half(a["image"], 3, step)
        flipped_b, mask_b = flip_half(b["image"], 3, step)
        assert mask_a.any() and torch.equal(mask_a, mask_b)
        assert torch.equal(flipped_a.view(torch.int32), flipped_b.view(torch.int32))


def test_cached_or_in_memory_sets_keep_the_float_path(recordio_set: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from corecompress_facekit.data.formats.recordio import RecordIODataset
    from corecompress_facekit.datasets import FaceSamples

    cached = FaceSamples(RecordIODataset(recordio_set), size=16, cache=True)
    assert _train_view(cached) == (cached, None)
    in_memory = FaceSamples([(img, 0) for img in smooth_faces(4)], size=16)  # declares no decode workers
    assert _train_view(in_memory) == (in_memory, None)
    decoding = FaceSamples(RecordIODataset(recordio_set), size=16)
    monkeypatch.setattr(training, "DEVICE_NORMALIZE", False)
    assert _train_view(decoding) == (decoding, None)


def test_short_run_gives_the_same_weights_with_and_without_device_normalisation(
        cli: Any, tmp_path: Path, recordio_set: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from corecompress_facekit.data import transforms

    calls: list[int] = []
    plain = transforms.normalize_uint8_batch

    def counted(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch.shape[0])
        return plain(batch)

    monkeypatch.setattr(transforms, "normalize_uint8_batch", counted)
    recipe = {"version": 1, "name": "u8", "seed": 2, "threads": 1, "deterministic": True,
              "model": {"name": "tiny_vit", "num_outputs": 5},
              "data": {"name": "recordio", "path": str(recordio_set), "image_size": 16},
              "train": {"steps": 4, "batch_size": 8, "lr": 3e-3, "augment": "flip", "num_workers": 0},
              "evaluate": []}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    runs = {}
    for on in (True, False):
        monkeypatch.setattr(training, "DEVICE_NORMALIZE", on)
        out = tmp_path / f"run-{on}"
        code, _out, err = cli("run", path, "--out", out, "--quiet")
        assert code == 0, err
        runs[on] = load_file(str(out / "model.safetensors"))
        assert calls == [8] * 4, calls  # 4 uint8 batches normalised by the on run, none by the off run
    assert runs[True].keys() == runs[False].keys()
    different = [k for k in runs[True] if not torch.equal(runs[True][k], runs[False][k])]
    assert not different, different[:5]
