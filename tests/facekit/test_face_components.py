"""Face plugin components as a recipe sees them: datasets, evaluators, adapters, end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from corecompress.plugin.loading import load_plugins
from corecompress_facekit.datasets import PairSet

REGISTRY = load_plugins().registry


def create(kind, name, **options):
    comp = REGISTRY.get(kind, name)
    return comp.create(comp.parse(options, kind))


SMALL = dict(identities=4, images_per_identity=3, eval_identities=4, eval_images_per_identity=3, eval_pairs=20,
             image_size=32)


def test_synthetic_faces_component_samples_and_sets():
    data = create("dataset", "synthetic_faces", **SMALL)
    assert data.num_classes == 4
    train = data.train()
    sample = train[5]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
    assert -1.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    assert sample["label"] == 1 and sample["index"] == 5 and sample["attributes"].shape == (40,)
    sets = data.evaluation()
    pairs = sets["synthetic"]
    assert isinstance(pairs, PairSet) and len(pairs.issame) == 20
    assert pairs.issame[0::2].all() and not pairs.issame[1::2].any()
    same_ids = [pairs.images[int(a)]["label"] == pairs.images[int(b)]["label"] for a, b in pairs.pairs]
    assert same_ids == pairs.issame.tolist()
    assert sets["synthetic_attributes"].mask.sum() == 39


class IdentityOracle(torch.nn.Module):
    """Embeds an image as the one-hot of the identity whose training-free signature it matches.

    For a constructed test: the dataset's own label is smuggled through a lookup of the image bytes.
    """

    def __init__(self, images: dict[bytes, int], classes: int, noise: float = 0.0) -> None:
        super().__init__()
        self.lookup, self.classes, self.noise = images, classes, noise
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(x.shape[0], self.classes)
        for i, img in enumerate(x):
            key = img.numpy().tobytes()
            flipped = img.flip(-1).numpy().tobytes()
            label = self.lookup.get(key, self.lookup.get(flipped))
            out[i, label] = 1.0
        return out + self.noise * torch.randn_like(out)


def test_verification_evaluator_on_a_perfect_and_a_random_model():
    data = create("dataset", "synthetic_faces", **SMALL)
    pairs = data.evaluation()["synthetic"]
    lookup = {}
    for i in range(len(pairs.images)):
        s = pairs.images[i]
        lookup[s["image"].numpy().tobytes()] = s["label"]
    evaluator = create("evaluator", "verification")
    perfect = evaluator.evaluate(IdentityOracle(lookup, 4), data, None)
    assert perfect["synthetic_accuracy"] == pytest.approx(100.0)
    assert perfect["synthetic_auc"] == pytest.approx(1.0)
    assert perfect["synthetic_eer"] == pytest.approx(0.0)

    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(4))

        def forward(self, x):
            return self.w.expand(x.shape[0], 4)

    chance = evaluator.evaluate(Constant(), data, None)
    assert chance["synthetic_auc"] == pytest.approx(0.5)
    assert chance["synthetic_accuracy"] <= 60.0


def test_attribute_probe_beats_chance_with_informative_embeddings():
    data = create("dataset", "synthetic_faces", identities=12, images_per_identity=4, eval_identities=6,
                  eval_images_per_identity=3, eval_pairs=10, image_size=32)
    train = data.train()
    eval_set = data.evaluation()["synthetic_attributes"].images
    table = {}
    for ds in (train, eval_set):
        for i in range(len(ds)):
            s = ds[i]
            table[s["image"].numpy().tobytes()] = s["attributes"]

    class AttributeOracle(torch.nn.Module):
        """Embedding = the attribute vector itself (+ noise): the probe should read it back."""

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.stack([table[img.numpy().tobytes()] for img in x]) * 2 - 1

    class Blind(torch.nn.Module):
        """Same output for every image: the probe can only learn the majority label."""

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.ones(40))

        def forward(self, x):
            return self.p.expand(x.shape[0], 40)

    probe = create("evaluator", "attributes", probe_steps=150, max_train_images=48, probe_lr=1e-2)
    informed = probe.evaluate(AttributeOracle(), data, None)["synthetic_attributes_mean_accuracy"]
    blind = probe.evaluate(Blind(), data, None)["synthetic_attributes_mean_accuracy"]
    assert informed > 85.0
    assert informed > blind + 5.0


def test_small_face_recipe_runs_end_to_end(cli, tmp_path):
    import yaml

    recipe = {"version": 1, "name": "face", "model": {"name": "swinface", "preset": "micro"},
              "data": {"name": "synthetic_faces", **SMALL},
              "train": {"steps": 2, "batch_size": 8, "objective": {"name": "arcface", "s": 16}},
              "teacher": {},
              "evaluate": ["verification", {"name": "attributes", "probe_steps": 5, "max_train_images": 12},
                           {"name": "efficiency", "batch_sizes": [4]}],
              "prune": {"importance": "faces", "sparsity": 0.5},
              "retrain": {"steps": 2, "batch_size": 8, "objective": {"name": "adadistill", "s": 16}}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, _out, err = cli("run", path, "--out", tmp_path / "run")
    assert code == 0, err
    import json

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for phase in ("before", "after"):
        assert 0.0 <= metrics[phase]["verification/synthetic_accuracy"] <= 100.0
        assert "attributes/synthetic_attributes_mean_accuracy" in metrics[phase]
    assert metrics["after"]["efficiency/macs"] < metrics["before"]["efficiency/macs"]
    assert (tmp_path / "run" / "header.safetensors").is_file()  # the teacher's trained classifier
    history = metrics["retrain"]["history"][-1]
    assert {"alpha", "lambda", "c"} <= set(history)


def test_swinface_reference_weights_load_through_recipe_option(tmp_path):
    from corecompress_facekit.models.swinface_checkpoint import reference_key_for

    spec = create("model", "swinface", preset="micro", checkpoint="reference")
    model = spec.build()
    reference = {reference_key_for(k): v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "ref.pt"
    torch.save(reference, path)
    fresh = spec.build()
    spec.load_weights(fresh, str(path))
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_olivetti_component_pairs_are_balanced(repo):
    from tests_shared import shared_file

    path = shared_file("olivetti/olivettifaces.mat")
    data = create("dataset", "olivetti", path=str(path))
    pairs = data.evaluation()["olivetti"]
    assert data.num_classes == 30 and len(data.train()) == 300
    assert pairs.issame.sum() == len(pairs.issame) // 2 == 450
    labels = data.labels[data._eval_idx]
    assert all((labels[a] == labels[b]) == s for (a, b), s in zip(pairs.pairs, pairs.issame))
    assert np.all(labels >= 30)
