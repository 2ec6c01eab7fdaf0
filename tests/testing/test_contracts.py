"""Every registered component passes the contract check of its kind — and nothing passes unchecked."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from corecompress.plugin.loading import load_plugins
from corecompress.plugin.registry import KINDS, Component
from corecompress.testing import contracts

REGISTRY = load_plugins().registry
COMPONENTS = [c for kind in KINDS for c in REGISTRY.components[kind].values()]
BUILT_IN = [c for c in COMPONENTS if c.distribution == "corecompress"]
CHECKED: dict[tuple[str, str], contracts.Checked] = {}

FACE_EVALUATION = {"model": "swinface", "model_options": {"preset": "micro", "img_size": 32},
                   "data": "synthetic_faces", "data_options": {"identities": 6, "images_per_identity": 2,
                                                               "eval_images_per_identity": 2, "image_size": 32}}


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> dict[str, Path]:
    """Tiny files for the datasets that read a path: an Olivetti .mat, a RecordIO set, identity folders, CelebA."""
    from scipy.io import savemat

    from corecompress_facekit.data.formats.recordio_writer import write_recordio

    root = tmp_path_factory.mktemp("contract-data")
    rng = np.random.default_rng(0)
    savemat(root / "olivettifaces.mat", {"faces": rng.integers(0, 256, (4096, 400), dtype=np.uint8)})
    images = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(6)]
    write_recordio(root / "rec", images, [0, 0, 1, 1, 2, 2])
    for person in ("ann", "bob"):
        (root / "ids" / person).mkdir(parents=True)
        for n in range(2):
            Image.fromarray(images[n]).save(root / "ids" / person / f"{n}.png")
    celeba = root / "celeba"
    (celeba / "img_align_celeba").mkdir(parents=True)
    lines = ["3", " ".join(f"Attr_{i}" for i in range(40))]
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(
            celeba / "img_align_celeba" / f"{i + 1:06d}.jpg")
        lines.append(f"{i + 1:06d}.jpg " + " ".join("1" if (i + j) % 2 else "-1" for j in range(40)))
    (celeba / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (celeba / "list_eval_partition.txt").write_text("".join(f"{i + 1:06d}.jpg {i % 3}\n" for i in range(3)))
    return {"olivetti": root / "olivettifaces.mat", "recordio": root / "rec", "identity_folders": root / "ids",
            "celeba": celeba}


def _arguments(component: Component, data_files: dict[str, Path]) -> dict:
    """What the check of a built-in needs beyond its defaults (a path; face model and data)."""
    if component.kind == "dataset" and component.name in data_files:
        key = "path" if component.name in ("olivetti", "recordio") else "root"
        return {"options": {key: str(data_files[component.name]), "image_size": 32}}
    if component.kind == "evaluator" and component.name in ("verification", "attributes"):
        return dict(FACE_EVALUATION)
    return {}


@pytest.mark.parametrize("component", COMPONENTS, ids=[f"{c.kind}/{c.name}" for c in COMPONENTS])
def test_component_contract(component, data_files):
    checked = contracts.check(component, **_arguments(component, data_files))
    assert (checked.kind, checked.name) == (component.kind, component.name)
    CHECKED[(component.kind, component.name)] = checked


def test_every_built_in_component_was_checked():
    """Runs after the parametrised checks (pytest keeps file order): each built-in was really checked."""
    wanted = {(c.kind, c.name) for c in BUILT_IN}
    missing = sorted(wanted - set(CHECKED))
    assert not missing, f"not checked: {missing}"
    assert len(wanted) == len(BUILT_IN) >= 44  # 44 built-ins when this test was written
    assert {kind for kind, _ in wanted} == set(KINDS)  # every kind has built-ins, and each was checked


# --- the checks can fail: a broken component of every kind ---------------------------------------

def _component(kind: str, factory, **declared) -> Component:
    return Component(kind=kind, name="broken", factory=factory, options=None, plugin="test", **declared)


class _ModelLosingAChannel:
    """Claims a group whose physical removal does not match its masks (wrong tensor listed)."""

    def __init__(self) -> None:
        self.inner = REGISTRY.get("model", "tiny_vit").create(REGISTRY.get("model", "tiny_vit").parse({}, "m"))
        self.input_size = self.inner.input_size

    def build(self):
        return self.inner.build()

    def prunable_groups(self, model, targets):
        groups = self.inner.prunable_groups(model, targets)  # neurons forget to cut fc2's inputs
        return [dataclasses.replace(g, slices=tuple(s for s in g.slices if s.dim != 1)) if g.kind == "neurons" else g
                for g in groups]


class _ScoresAList:
    def score(self, model, groups, context):
        return {g.name: [1.0] * g.size for g in groups}


class _ScoresSome:
    def score(self, model, groups, context):
        return {g.name: torch.ones(g.size) for g in groups[:1]}


class _Wrong:
    def apply(self, model, groups, plan, context):
        return model  # ignores the plan: output differs from the masked model


class _Drifting:
    calls = 0

    def __call__(self, step, total):
        _Drifting.calls += 1
        return float(_Drifting.calls)


class _SecretTeacherLoss(torch.nn.Module):
    """Uses the teacher without declaring it needs one."""

    def forward(self, outputs, batch, teacher_outputs=None):
        return {"loss": (outputs - teacher_outputs).pow(2).mean()}


class _UndeclaredArtifactLoss(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(16, 5)

    def forward(self, outputs, batch, teacher_outputs=None):
        return {"loss": torch.nn.functional.cross_entropy(self.head(outputs), batch["label"])}

    def artifacts(self):
        return {"my_head": self.head}


class _OffByOneLabels:
    num_classes = 3

    def train(self):
        return [{"image": torch.zeros(3, 8, 8), "label": 3}]

    def evaluation(self):
        return {}


class _StaleTarget:
    def prepare(self, teacher, dataset, context):
        self.rows = torch.zeros(len(dataset), 16)  # not the teacher's embeddings

    def __call__(self, batch):
        return self.rows[batch["index"]]


class _SilentEvaluator:
    def evaluate(self, model, data, context):
        return {"accuracy": float("nan")}


class _MuteReporter:
    def write(self, run):
        pass


@pytest.mark.parametrize("kind, factory, declared, message", [
    ("model", _ModelLosingAChannel, {}, r"model broken: pruning neurons fails"),
    ("importance", _ScoresAList, {}, r"a list; expected a torch.Tensor of shape"),
    ("importance", _ScoresSome, {}, r"scored 1 of \d+ groups; missing .*declines_groups=True"),
    ("applier", _Wrong, {}, "differs from the masked model"),
    ("schedule", _Drifting, {}, "pure function"),
    ("loss", _SecretTeacherLoss, {}, r"setup/forward failed .*needs=\[\]\): TypeError"),
    ("loss", _UndeclaredArtifactLoss, {}, r"offers artifacts \['my_head'\] it did not declare"),
    ("dataset", _OffByOneLabels, {}, r"label 3 outside \[0, 3\)"),
    ("target", _StaleTarget, {}, "differ from the teacher's"),
    ("evaluator", _SilentEvaluator, {}, "no finite metric"),
    ("reporter", _MuteReporter, {}, "wrote nothing"),
], ids=lambda v: v if isinstance(v, str) and " " not in v and len(v) < 12 else None)
def test_a_broken_component_of_each_kind_fails_its_check(kind, factory, declared, message):
    with pytest.raises((AssertionError, TypeError), match=message):
        contracts.check(_component(kind, factory, **declared))


def test_an_importance_declaring_it_declines_groups_may_score_some():
    assert contracts.check(_component("importance", _ScoresSome, declines_groups=True)).detail == "2 groups scored"


def test_every_kind_has_a_check_and_a_broken_example():
    assert set(contracts.CHECKS) == set(KINDS)


def test_a_component_needing_options_is_not_passed_unchecked():
    with pytest.raises(AssertionError, match="cannot be built from its defaults.*pass options="):
        contracts.check(REGISTRY.get("dataset", "recordio"))


def test_check_by_name_and_a_clear_error_for_an_instance():
    assert contracts.check("schedule/cosine").name == "cosine"
    with pytest.raises(TypeError, match="not a _Drifting instance"):
        contracts.check(_Drifting())


def test_a_component_without_its_protocol_is_named():
    class NoScore:
        def rank(self, model, groups, context):
            return {}

    with pytest.raises(AssertionError, match=r"importance broken: does not provide the Importance protocol"):
        contracts.check(_component("importance", NoScore))
