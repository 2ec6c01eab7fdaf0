"""The plain margin objective (``margin``/``arcface``/``cosface``): hand-computed losses, init, registration."""
from __future__ import annotations

import logging
import math
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from corecompress.errors import RecipeError, UserError
from corecompress import hookimpl
from corecompress.config.options import parse_options
from corecompress.plugin.loading import load_plugins
from corecompress_facekit.heads.margin import CombinedMarginHead
from corecompress_facekit.losses import (
    HeaderFileError, MarginObjective, MarginObjectiveOptions, as_embedding, register_losses, student_embedding_size,
)


def make_ctx(num_classes: int = 3, size: int | None = 2, seed: int = 0, model=None):
    return SimpleNamespace(data=SimpleNamespace(num_classes=num_classes),
                           model_spec=SimpleNamespace(embedding_size=size, input_size=(3, 4, 4)), model=model,
                           teacher=None, state={}, recipe=SimpleNamespace(seed=seed),
                           log=logging.getLogger("test"), device=torch.device("cpu"))


def objective(ctx=None, **options) -> MarginObjective:
    loss = MarginObjective(MarginObjectiveOptions(**options))
    loss.setup(ctx or make_ctx())
    return loss


def hand_ce(logits: list[float], target: int) -> float:
    return math.log(sum(math.exp(z) for z in logits)) - logits[target]


def test_arcface_loss_by_hand() -> None:
    loss = objective(s=4.0)                                   # arcface, m defaults to 0.5
    with torch.no_grad():
        loss.head.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]))
    angle = math.pi / 6                                       # embedding at 30° from class 0
    emb = torch.tensor([[math.cos(angle) * 5, math.sin(angle) * 5]])
    parts = loss(emb, {"label": torch.tensor([0])})
    logits = [4 * math.cos(angle + 0.5), 4 * math.sin(angle), -4 * math.cos(angle)]
    assert parts["loss"].item() == pytest.approx(hand_ce(logits, 0), rel=1e-5)
    assert float(parts["margin_loss"]) == pytest.approx(parts["loss"].item())


def test_cosface_preset_and_combined_by_hand() -> None:
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    emb = torch.tensor([[0.8, 0.6], [0.56, 1.92]])
    labels = torch.tensor([2, 1])
    cos = [[0.8, 0.6, 0.96], [0.28, 0.96, 0.936]]
    cosface = objective(margin="cosface", s=2.0)              # m defaults to 0.35
    combined = objective(margin="combined", s=2.0, m1=1.0, m2=0.1, m3=0.2)
    for loss, target in ((cosface, lambda c: c - 0.35), (combined, lambda c: math.cos(math.acos(c) + 0.1) - 0.2)):
        with torch.no_grad():
            loss.head.weight.copy_(weight)
        rows = []
        for i, y in enumerate(labels.tolist()):
            z = [2.0 * c for c in cos[i]]
            z[y] = 2.0 * target(cos[i][y])
            rows.append(hand_ce(z, y))
        assert loss(emb, {"label": labels})["loss"].item() == pytest.approx(sum(rows) / 2, rel=1e-5)


def test_head_is_seeded_trainable_and_published() -> None:
    ctx = make_ctx(num_classes=50, size=32, seed=3)
    a, b = objective(ctx), objective(make_ctx(num_classes=50, size=32, seed=3))
    c = objective(make_ctx(num_classes=50, size=32, seed=4))
    assert isinstance(a.head, CombinedMarginHead) and a.head.weight.shape == (50, 32)
    assert torch.equal(a.head.weight, b.head.weight) and not torch.equal(a.head.weight, c.head.weight)
    assert 0.008 < float(a.head.weight.detach().std()) < 0.012
    assert a.artifacts() == {"header": a.head}
    assert [p is a.head.weight for p in a.parameters()] == [True]
    assert "head.weight" in a.state_dict()


def test_training_the_head_and_embeddings_lowers_the_loss() -> None:
    torch.manual_seed(0)
    loss = objective(make_ctx(num_classes=3, size=2), s=8.0, m=0.2)
    emb = torch.nn.Parameter(torch.randn(12, 2))
    labels = torch.arange(12) % 3
    optimizer = torch.optim.SGD([emb, *loss.parameters()], lr=0.2)
    first = None
    for _ in range(40):
        value = loss(emb, {"label": labels})["loss"]
        first = value.item() if first is None else first
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    assert value.item() < 0.5 * first


@pytest.mark.parametrize("layout", ["KE", "EK"])
def test_init_header_from_file(tmp_path: Path, layout: str) -> None:
    header = torch.arange(6, dtype=torch.float32).reshape(3, 2) + 1
    if layout == "KE":
        path = tmp_path / "header.safetensors"
        save_file({"fc.weight": header}, str(path))
    else:
        path = tmp_path / "header.pt"
        torch.save({"kernel": header.t().contiguous()}, path)
    loss = objective(init_header=str(path))
    assert torch.equal(loss.head.weight.detach(), header)


def test_init_header_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        objective(init_header=str(tmp_path / "missing.safetensors"))
    wrong = tmp_path / "wrong.safetensors"
    save_file({"weight": torch.zeros(4, 2)}, str(wrong))
    with pytest.raises(HeaderFileError, match=r"wrong.safetensors: classifier has shape \[4, 2\], expected \[3, 2\]"):
        objective(init_header=str(wrong))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(HeaderFileError, match="garbage.pt: cannot read weights"):
        objective(init_header=str(garbage))
    two = tmp_path / "two.safetensors"
    save_file({"a": torch.zeros(3, 2), "b": torch.zeros(3, 2)}, str(two))
    with pytest.raises(HeaderFileError, match="exactly one 2-D classifier matrix, found: a, b"):
        objective(init_header=str(two))
    assert issubclass(HeaderFileError, UserError)


def test_options_validation() -> None:
    with pytest.raises(RecipeError, match="s: must be > 0"):
        parse_options(MarginObjectiveOptions, {"s": 0})
    with pytest.raises(RecipeError, match="m2: only used with margin: combined"):
        parse_options(MarginObjectiveOptions, {"m2": 0.3})
    with pytest.raises(RecipeError, match="must be one of"):
        parse_options(MarginObjectiveOptions, {"margin": "sphereface"})


def test_student_size_is_probed_when_undeclared() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5), torch.nn.BatchNorm1d(5))
    model.train()
    model[0].eval()
    ctx = make_ctx(size=None, model=model)
    assert student_embedding_size(ctx) == 5 and model.training and model[2].training and not model[0].training
    assert float(model[2].num_batches_tracked) == 0          # probed in eval mode: no statistics changed
    assert objective(ctx).head.weight.shape == (3, 5)


def test_as_embedding_accepts_named_outputs() -> None:
    emb = torch.randn(2, 3)
    assert as_embedding({"embedding": emb}) is emb
    assert as_embedding(SimpleNamespace(embedding=emb)) is emb
    with pytest.raises(ValueError, match="shape"):
        as_embedding(torch.randn(2, 3, 4))


def test_registered_names_through_an_in_process_plugin() -> None:
    plugin = types.ModuleType("face_losses_test")
    plugin.register_losses = hookimpl(lambda register: register_losses(register))
    registry = load_plugins(autoload=False, extra=[("face_losses_test", plugin)]).registry
    assert {"margin", "arcface", "cosface"} <= set(registry.names("loss"))
    arc = registry.get("loss", "arcface")
    loss = arc.create(arc.parse({"s": 32.0}, "train.objective"))
    assert (loss.m1, loss.m2, loss.m3, loss.options.s) == (1.0, 0.5, 0.0, 32.0)
    cos = registry.get("loss", "cosface")
    assert cos.create(cos.parse(None, "x")).m3 == 0.35
    with pytest.raises(RecipeError, match="m: must be >= 0"):
        cos.parse({"m": -0.1}, "x")
