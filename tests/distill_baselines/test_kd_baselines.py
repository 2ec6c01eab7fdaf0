"""Distillation baselines (spec adadistill.md "Baselines", faces.md): hand-computed losses, headers, projector."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from corecompress.engine.artifacts import ArtifactStore, objective_artifacts
from corecompress.errors import RecipeError, UserError
from corecompress.plugin.loading import load_plugins
from corecompress.config.options import parse_options
from corecompress_facekit.heads.margin import CombinedMarginHead
from corecompress_facekit.losses import LossConfigError
from corecompress_faces_pruner.embedding_cosine import EmbeddingCosine, EmbeddingCosineOptions
from corecompress_distill_baselines.feature_mse import FeatureMSE, FeatureMSEOptions
from corecompress_distill_baselines.header_distill import ArcDistillOptions, CosDistillOptions, HeaderDistill
from corecompress_distill_baselines.hinton import HintonKD, HintonKDOptions

HEADER = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-0.6, 0.8]])          # K = 3 classes × E = 2


def make_ctx(num_classes: int = 3, student_size: int = 2, teacher_size: int = 2, seed: int = 0, artifacts=None):
    store = ArtifactStore()
    for name, value in (artifacts or {}).items():
        store.publish(name, value, phase="train", producer="test")
    return SimpleNamespace(
        data=SimpleNamespace(num_classes=num_classes),
        model_spec=SimpleNamespace(embedding_size=student_size, input_size=(3, 4, 4)),
        teacher=SimpleNamespace(embedding_size=teacher_size), state={}, artifacts=store,
        recipe=SimpleNamespace(seed=seed, teacher=None), log=logging.getLogger("test"), device=torch.device("cpu"))


def needs(name: str, **options) -> frozenset[str]:
    """What the registered loss ``name`` declares it needs with these options."""
    component = load_plugins().registry.get("loss", name)
    return component.needs_for(component.parse(options, "retrain.objective"))


def build(cls, options, ctx=None, method=None):
    loss = cls(options) if method is None else cls(options, method)
    loss.setup(ctx or make_ctx())
    return loss


def hand_ce(logits: list[float], target: int) -> float:
    return math.log(sum(math.exp(z) for z in logits)) - logits[target]


def header_file(tmp_path: Path, matrix: torch.Tensor = HEADER) -> str:
    path = tmp_path / "teacher_header.safetensors"
    save_file({"weight": matrix.contiguous()}, str(path))
    return str(path)


# --- feature_mse ----------------------------------------------------------------------------------

def test_feature_mse_by_hand() -> None:
    loss = build(FeatureMSE, FeatureMSEOptions(with_margin=False, weight=2.0))
    f_s, f_t = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    parts = loss(f_s, {"label": torch.tensor([0, 1])}, f_t)
    assert parts["feature_mse"].item() == pytest.approx((1.0 + 2.0) / 2)
    assert parts["loss"].item() == pytest.approx(3.0) and list(loss.parameters()) == []
    normalised = build(FeatureMSE, FeatureMSEOptions(with_margin=False, normalize=True))
    value = normalised(f_s, {"label": torch.tensor([0, 1])}, torch.tensor([[3.0, 0.0], [1.0, 1.0]]))["loss"]
    assert value.item() == pytest.approx(((2 - 2 * 1.0) + (2 - 2 / math.sqrt(2))) / 2, rel=1e-6)


def test_feature_mse_with_margin_adds_the_margin_loss() -> None:
    ctx = make_ctx()
    loss = build(FeatureMSE, FeatureMSEOptions(weight=0.5, s=8.0), ctx)
    assert objective_artifacts(loss)["header"] is loss.margin.head and loss.margin.m2 == 0.45  # AdaDistill's m
    f_s = torch.randn(4, 2, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 1])
    parts = loss(f_s, {"label": labels}, torch.randn(4, 2))
    expected_margin = F.cross_entropy(loss.margin.head(f_s, labels), labels)
    assert parts["margin_loss"].item() == pytest.approx(expected_margin.item(), rel=1e-6)
    expected = 0.5 * parts["feature_mse"].item() + parts["margin_loss"].item()
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-6)
    parts["loss"].backward()
    assert loss.margin.head.weight.grad is not None and f_s.grad is not None


# --- arcdistill / cosdistill ---------------------------------------------------------------------

def test_arcdistill_by_hand_against_frozen_header_file(tmp_path: Path) -> None:
    loss = build(HeaderDistill, ArcDistillOptions(header=header_file(tmp_path), s=4.0, m=0.3))
    assert list(loss.parameters()) == []
    assert needs("arcdistill", header="x.safetensors") == set()      # a header file: no teacher run
    assert needs("arcdistill") == {"artifact:header"} and needs("cosdistill", header="class_means") == {"teacher"}
    assert needs("hinton_kd") == {"teacher", "artifact:header"}
    angle = math.pi / 3                                       # 60° from class 0, 30° from class 1
    emb = torch.tensor([[math.cos(angle), math.sin(angle)]], requires_grad=True)
    parts = loss(emb, {"label": torch.tensor([1])})
    cos = [math.cos(angle), math.sin(angle), -0.6 * math.cos(angle) + 0.8 * math.sin(angle)]
    logits = [4 * c for c in cos]
    logits[1] = 4 * math.cos(math.acos(cos[1]) + 0.3)
    assert parts["loss"].item() == pytest.approx(hand_ce(logits, 1), rel=1e-5)

    before = loss.teacher_header.clone()
    optimizer = torch.optim.SGD([emb, *loss.parameters()], lr=1.0)
    parts["loss"].backward()
    optimizer.step()
    assert emb.grad is not None and torch.equal(loss.teacher_header, before)
    assert "teacher_header" not in loss.state_dict()          # frozen, reloaded from its source


def test_cosdistill_from_the_header_artifact_and_transposed_header() -> None:
    head = CombinedMarginHead(2, 3, init_weight=HEADER)
    for held in (head, HEADER.t().contiguous()):              # a module with .weight, or an E × K kernel
        loss = build(HeaderDistill, CosDistillOptions(s=2.0), make_ctx(artifacts={"header": held}), "cosdistill")
        emb = torch.tensor([[0.0, 3.0]])
        cos = [0.0, 1.0, 0.8]
        logits = [2 * c for c in cos]
        logits[2] = 2 * (0.8 - 0.35)                           # CosFace default m = 0.35
        assert loss(emb, {"label": torch.tensor([2])})["loss"].item() == pytest.approx(hand_ce(logits, 2), rel=1e-5)


def test_header_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="arcdistill needs the artifact 'header' by the train phase, which this run "
                                        "did not produce.*set the option 'header: <file>'"):
        build(HeaderDistill, ArcDistillOptions())
    with pytest.raises(ValueError, match=r"classifier has shape \[4, 2\], expected \[3, E\]"):
        build(HeaderDistill, ArcDistillOptions(header=header_file(tmp_path, torch.zeros(4, 2))))
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        build(HeaderDistill, ArcDistillOptions(header=str(tmp_path / "nothing.safetensors")))
    with pytest.raises(LossConfigError, match=r"student embedding size 5 differs from teacher embedding size 2"):
        build(HeaderDistill, ArcDistillOptions(header=header_file(tmp_path)), make_ctx(student_size=5))


# --- hinton_kd ------------------------------------------------------------------------------------

def test_hinton_kd_by_hand(tmp_path: Path) -> None:
    loss = build(HintonKD, HintonKDOptions(header=header_file(tmp_path), s=2.0, m=0.0, temperature=2.0, weight=0.5))
    f_s, f_t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    parts = loss(f_s, {"label": torch.tensor([0])}, f_t)
    cos_s, cos_t = [1.0, 0.0, -0.6], [0.0, 1.0, 0.8]
    def softmax(z):
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]
    p_s = softmax([2 * c / 2 for c in cos_s])
    p_t = softmax([2 * c / 2 for c in cos_t])
    kd = 4 * sum(t * math.log(t / s) for t, s in zip(p_t, p_s))
    margin = hand_ce([2 * c for c in cos_s], 0)              # m = 0: plain normalised softmax
    assert parts["kd"].item() == pytest.approx(kd, rel=1e-5)
    assert parts["loss"].item() == pytest.approx(margin + 0.5 * kd, rel=1e-5)
    same = loss(f_t, {"label": torch.tensor([1])}, f_t)       # student = teacher: no soft loss
    assert same["kd"].item() == pytest.approx(0.0, abs=1e-6)


def test_hinton_kd_trainable_head_and_size_checks(tmp_path: Path) -> None:
    loss = build(HintonKD, HintonKDOptions(header=header_file(tmp_path), train_head=True))
    assert [p is loss.student_head for p in loss.parameters()] == [True]
    emb = torch.randn(4, 2)
    loss(emb, {"label": torch.tensor([0, 1, 2, 0])}, torch.randn(4, 2))["loss"].backward()
    assert loss.student_head.grad is not None and loss.student_head.grad.abs().sum() > 0
    with pytest.raises(LossConfigError, match="teacher embedding size 7 differs from the teacher classifier's"):
        build(HintonKD, HintonKDOptions(header=header_file(tmp_path)), make_ctx(teacher_size=7))
    with pytest.raises(RecipeError, match="temperature: must be > 0"):
        parse_options(HintonKDOptions, {"temperature": 0})


# --- embedding_cosine (FACES) --------------------------------------------------------------------

def test_embedding_cosine_by_hand() -> None:
    loss = build(EmbeddingCosine, EmbeddingCosineOptions(weight=0.3))
    assert loss.margin.m2 == 0.5 and needs("embedding_cosine") == {"teacher"}  # FACES: ArcFace m = 0.5
    f_s = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    f_t = torch.tensor([[2.0, 0.0], [-1.0, 1.0]])              # cos 1 and 0 -> mean 0.5
    labels = torch.tensor([0, 2])
    parts = loss(f_s, {"label": labels}, f_t)
    margin = F.cross_entropy(loss.margin.head(f_s, labels), labels).item()
    assert parts["cosine"].item() == pytest.approx(0.5)
    assert parts["loss"].item() == pytest.approx(0.7 * margin + 0.3 * 0.5, rel=1e-6)
    with pytest.raises(RecipeError, match=r"weight: must be in \[0, 1\]"):
        parse_options(EmbeddingCosineOptions, {"weight": 1.5})


# --- projector ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda o: (FeatureMSE, FeatureMSEOptions(projector=o)),
    lambda o: (EmbeddingCosine, EmbeddingCosineOptions(projector=o)),
])
def test_projector_maps_student_to_teacher_size(make) -> None:
    ctx = make_ctx(student_size=6, teacher_size=2)
    cls, options = make(False)
    with pytest.raises(LossConfigError, match="student embedding size 6 differs from teacher embedding size 2"):
        build(cls, options, ctx)
    cls, options = make(True)
    loss = build(cls, options, make_ctx(student_size=6, teacher_size=2))
    assert loss.projector.weight.shape == (2, 6)
    student = torch.randn(3, 6, requires_grad=True)
    loss(student, {"label": torch.tensor([0, 1, 2])}, torch.randn(3, 2))["loss"].backward()
    assert loss.projector.weight.grad is not None and student.grad is not None
    again = build(cls, options, make_ctx(student_size=6, teacher_size=2))
    assert torch.equal(again.projector.weight, loss.projector.weight)   # seeded


def test_embedding_cosine_is_registered_by_the_faces_plugin() -> None:
    import corecompress_faces_pruner
    from corecompress.plugin.loading import load_plugins

    registry = load_plugins(autoload=False, extra=[("faces_test", corecompress_faces_pruner)]).registry
    component = registry.get("loss", "embedding_cosine")
    assert component.plugin == "faces_test" and component.factory is EmbeddingCosine


def test_registered_through_the_plugin(tmp_path: Path) -> None:
    import corecompress_distill_baselines
    from corecompress.plugin.loading import load_plugins

    registry = load_plugins(autoload=False, extra=[("kd_test", corecompress_distill_baselines)]).registry
    assert {"feature_mse", "arcdistill", "cosdistill", "hinton_kd"} <= set(registry.names("loss"))
    assert "embedding_cosine" not in registry.names("loss")  # the FACES term: registered by faces_pruner
    cos = registry.get("loss", "cosdistill")
    loss = cos.create(cos.parse({"header": header_file(tmp_path)}, "train.objective"))
    assert loss.method == "cosdistill" and loss.m3 == 0.35
    with pytest.raises(RecipeError, match="did you mean 'temperature'"):
        registry.get("loss", "hinton_kd").parse({"temprature": 2.0}, "train.objective")
