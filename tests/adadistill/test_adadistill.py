"""AdaDistill (spec adadistill.md): hand-computed centre updates, ordering, DDP sync, gradients, checkpoints."""
from __future__ import annotations

import logging
import math
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from corecompress.errors import RecipeError
from corecompress.config.options import parse_options
from corecompress_adadistill.centres import adaptive_update, occurrence_rank
from corecompress_adadistill.loss import AdaDistill, AdaDistillOptions
from corecompress_facekit.heads.margin import margin_logits
from corecompress_facekit.losses import LossConfigError


def make_ctx(num_classes: int = 3, student_size: int = 4, teacher_size: int | None = None, seed: int = 0):
    teacher_size = student_size if teacher_size is None else teacher_size
    return SimpleNamespace(
        data=SimpleNamespace(num_classes=num_classes),
        model_spec=SimpleNamespace(embedding_size=student_size, input_size=(3, 8, 8)),
        teacher=SimpleNamespace(embedding_size=teacher_size),
        state={}, recipe=SimpleNamespace(seed=seed), log=logging.getLogger("test"), device=torch.device("cpu"))


def make_loss(ctx=None, **options) -> AdaDistill:
    loss = AdaDistill(AdaDistillOptions(**options))
    loss.setup(ctx or make_ctx())
    return loss


def unit(*values: float) -> torch.Tensor:
    v = torch.tensor(values, dtype=torch.float32)
    return v / v.norm()


# --- the update rule, by hand ---------------------------------------------------------------------

def test_hand_computed_update_and_first_visit() -> None:
    centres = torch.tensor([[0.0, 0.0, 0.0, 0.01],      # class 0: orthogonal to its f_t -> λ = 0 -> 1e-6
                            [0.0, -0.01, 0.0, 0.0],     # class 1: opposite -> λ = -1 -> 1e-6
                            [0.01, 0.0, 0.01, 0.0]])    # class 2: 45° to its f_t -> λ = 1/√2
    f_t = torch.eye(4)[:3]
    f_s = torch.stack([unit(1, 1, 0, 0), unit(0, 1, 0, 0), unit(math.sqrt(3), 0, 1, 0)])  # c = 1/√2, 1, 1/2
    labels = torch.tensor([0, 1, 2])
    before = centres.clone()
    stats = adaptive_update(centres, f_s, f_t, labels)

    assert torch.allclose(stats.c, torch.tensor([1 / math.sqrt(2), 1.0, 0.5]), atol=1e-6)
    assert torch.allclose(stats.lam, torch.tensor([1e-6, 1e-6, 1 / math.sqrt(2)]), atol=1e-7)
    alpha2 = 0.5 / math.sqrt(2)
    assert torch.allclose(stats.alpha, torch.tensor([1e-6, 1e-6, alpha2]), atol=1e-7)
    expected = torch.stack([1e-6 * before[0] + (1 - 1e-6) * f_t[0],
                            1e-6 * before[1] + (1 - 1e-6) * f_t[1],
                            torch.tensor([alpha2 * 0.01, 0.0, alpha2 * 0.01 + (1 - alpha2), 0.0])])
    assert torch.allclose(centres, expected, atol=1e-7)
    # first visits (λ clamped): the centre is the teacher embedding
    assert (F.cosine_similarity(centres[:2], f_t[:2], dim=1) > 0.9999).all()


def test_first_visit_from_default_init_copies_teacher_embedding() -> None:
    torch.manual_seed(1)
    loss = make_loss(make_ctx(num_classes=5, student_size=512))
    f_t = F.normalize(torch.randn(5, 512), dim=1)
    f_s = F.normalize(torch.randn(5, 512), dim=1)           # an untrained student
    stats = adaptive_update(loss.centres, f_s, f_t, torch.arange(5))
    assert (stats.alpha < 1e-2).all()
    assert (F.cosine_similarity(loss.centres, f_t, dim=1) > 0.9999).all()


def test_duplicate_labels_apply_in_batch_order() -> None:
    centres = torch.tensor([[0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    f_t = torch.stack([unit(0, 1, 0, 0), unit(1, 0, 0, 0), unit(0.6, 0.8, 0, 0)])
    f_s = f_t.clone()                                         # c = 1 for every sample
    labels = torch.tensor([1, 0, 1])
    start1 = centres[1].clone()
    stats = adaptive_update(centres, f_s, f_t, labels)

    # sample 0 first: λ = cos((0,0,0,1), e2) = 0 -> α′ = 1e-6
    a0 = 1e-6
    w = [a0 * x + (1 - a0) * y for x, y in zip(start1.tolist(), [0.0, 1.0, 0.0, 0.0])]
    # then sample 2 sees the moved centre: λ = 0.8·w[1] / |w|
    lam2 = (0.6 * w[0] + 0.8 * w[1]) / math.sqrt(sum(x * x for x in w))
    w = [lam2 * x + (1 - lam2) * y for x, y in zip(w, [0.6, 0.8, 0.0, 0.0])]
    assert torch.allclose(centres[1], torch.tensor(w), atol=1e-6)
    assert stats.lam[2].item() == pytest.approx(lam2, abs=1e-6)
    assert stats.alpha[2].item() == pytest.approx(lam2, abs=1e-6)
    assert torch.allclose(centres[1], torch.tensor([0.12, 0.96, 0.0, 0.0]), atol=1e-5)
    # not "last write wins" (the reference): that would leave ≈ f_t of sample 2
    assert not torch.allclose(centres[1], f_t[2], atol=1e-2)
    # class 0: centre already along its f_t and c = 1 -> α′ = 1, it stays; class 2 is not visited
    assert stats.alpha[1].item() == pytest.approx(1.0)
    assert torch.allclose(centres[0], torch.tensor([0.5, 0.0, 0.0, 0.0]))
    assert torch.equal(centres[2], torch.tensor([0.0, 0.0, 1.0, 0.0]))


def naive_update(centres: torch.Tensor, f_s, f_t, labels, variant: str) -> list[float]:
    """The rule sample by sample, in batch order (the definition the vectorised code must match)."""
    f_s, f_t = F.normalize(f_s, dim=1), F.normalize(f_t, dim=1)
    alphas = []
    for i in range(len(labels)):
        row = centres[labels[i]]
        c = float((f_s[i] * f_t[i]).sum().clamp(-1, 1))
        lam = min(max(float(F.cosine_similarity(row, f_t[i], dim=0, eps=1e-12)), 1e-6), 1.0)
        alpha = min(max(c * lam, 1e-6), 1.0) if variant == "weighted" else min(max(c, 0.0), 1.0)
        centres[labels[i]] = alpha * row + (1 - alpha) * f_t[i]
        alphas.append(alpha)
    return alphas


@pytest.mark.parametrize("variant", ["weighted", "plain"])
def test_vectorised_update_matches_sequential_definition(variant: str) -> None:
    gen = torch.Generator().manual_seed(3)
    centres = torch.randn(6, 8, generator=gen)
    labels = torch.tensor([2, 5, 2, 0, 2, 5, 1, 0, 2])     # repeat depth 4
    f_t = torch.randn(9, 8, generator=gen)
    f_s = f_t + 0.7 * torch.randn(9, 8, generator=gen)
    expected = centres.clone()
    alphas = naive_update(expected, f_s, f_t, labels, variant)
    stats = adaptive_update(centres, f_s, f_t, labels, variant)
    assert torch.allclose(centres, expected, atol=1e-6)
    assert torch.allclose(stats.alpha, torch.tensor(alphas), atol=1e-6)


def test_occurrence_rank() -> None:
    assert occurrence_rank(torch.tensor([4, 1, 4, 4, 1, 0])).tolist() == [0, 0, 1, 2, 1, 0]
    assert occurrence_rank(torch.tensor([], dtype=torch.long)).tolist() == []


@settings(max_examples=40, deadline=None)
@given(num_classes=st.integers(1, 5), dim=st.integers(2, 6), batch=st.integers(1, 10),
       seed=st.integers(0, 10_000), scale=st.sampled_from([1e-3, 1.0, 1e3]),
       mode=st.sampled_from(["random", "same", "opposite"]))
def test_alpha_always_in_range(num_classes: int, dim: int, batch: int, seed: int, scale: float, mode: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=gen) * scale
    labels = torch.randint(0, num_classes, (batch,), generator=gen)
    f_t = torch.randn(batch, dim, generator=gen)
    f_s = {"random": torch.randn(batch, dim, generator=gen), "same": f_t, "opposite": -f_t}[mode]
    stats = adaptive_update(centres, f_s, f_t, labels)
    assert ((stats.alpha >= 1e-6) & (stats.alpha <= 1.0)).all()
    assert ((stats.lam >= 1e-6) & (stats.lam <= 1.0)).all()
    assert ((stats.c >= -1.0) & (stats.c <= 1.0)).all()
    assert torch.isfinite(centres).all()


def test_perfect_student_and_converged_centre_stop_moving() -> None:
    f_t = torch.stack([unit(1, 2, 3, 4), unit(-1, 0, 2, 0)])
    centres = torch.stack([f_t[0], f_t[1], unit(0, 0, 0, 1)])
    before = centres.clone()
    stats = adaptive_update(centres, f_t.clone(), f_t, torch.tensor([0, 1]))
    assert torch.allclose(stats.alpha, torch.ones(2), atol=1e-6)
    assert torch.allclose(centres, before, atol=1e-6)


def test_plain_variant_hand_computed_and_in_the_loss() -> None:
    centres = torch.tensor([[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    f_t = torch.stack([unit(1, 0, 0, 0), unit(0, 1, 0, 0)])
    f_s = torch.stack([unit(1, math.sqrt(3), 0, 0), unit(0, -1, 0, 0)])  # c = 1/2 and −1
    stats = adaptive_update(centres, f_s, f_t, torch.tensor([0, 1]), "plain")
    assert torch.allclose(stats.alpha, torch.tensor([0.5, 0.0]))
    assert torch.allclose(centres, torch.tensor([[0.5, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]))

    loss = make_loss(variant="plain")
    parts = loss(torch.randn(3, 4), {"label": torch.tensor([0, 1, 1])}, torch.randn(3, 4))
    assert torch.isfinite(parts["loss"]) and 0.0 <= float(parts["alpha"]) <= 1.0


# --- the loss module ------------------------------------------------------------------------------

def test_update_happens_before_logits_and_gradients_reach_only_the_student() -> None:
    loss = make_loss(make_ctx(num_classes=3, student_size=4), s=8.0, m=0.3)
    student = torch.nn.Linear(6, 4)
    x, labels = torch.randn(5, 6), torch.tensor([0, 2, 2, 1, 0])
    f_t = torch.randn(5, 4, requires_grad=True)
    before = loss.centres.clone()
    parts = loss(student(x), {"label": labels}, f_t)

    # the returned loss uses the updated centres
    assert not torch.equal(loss.centres, before)
    with torch.no_grad():
        cos = F.linear(F.normalize(student(x), dim=1), F.normalize(loss.centres, dim=1))
        expected = F.cross_entropy(margin_logits(cos, labels, 8.0, 1.0, 0.3, 0.0), labels)
        stale = F.cross_entropy(margin_logits(F.linear(F.normalize(student(x), dim=1), F.normalize(before, dim=1)),
                                              labels, 8.0, 1.0, 0.3, 0.0), labels)
    assert float(parts["loss"].detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(parts["loss"].detach()) != pytest.approx(float(stale), rel=1e-3)
    assert {"alpha", "lambda", "c", "ce"} <= set(parts)

    centres_after_update = loss.centres.clone()
    optimizer = torch.optim.SGD(list(student.parameters()) + list(loss.parameters()), lr=0.5)
    parts["loss"].backward()
    assert list(loss.parameters()) == []
    assert not loss.centres.requires_grad and loss.centres.grad is None
    assert f_t.grad is None
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    optimizer.step()
    assert torch.equal(loss.centres, centres_after_update)


def test_cosines_stay_float32_under_autocast() -> None:
    emb, f_t, labels = torch.randn(4, 4), torch.randn(4, 4), torch.tensor([0, 1, 2, 0])
    plain, mixed = make_loss(), make_loss()
    reference = plain(emb, {"label": labels}, f_t)["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.linear(emb, mixed.centres).dtype == torch.bfloat16       # what an unguarded matmul would do
        value = mixed(emb, {"label": labels}, f_t)["loss"]
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(reference.item(), rel=1e-6)


def test_eval_mode_does_not_move_the_centres() -> None:
    loss = make_loss()
    loss.eval()
    before = loss.centres.clone()
    parts = loss(torch.randn(2, 4), {"label": torch.tensor([0, 1])}, torch.randn(2, 4))
    assert torch.equal(loss.centres, before) and "alpha" not in parts


def test_centres_seeded_init_and_checkpoint_round_trip(tmp_path: Path) -> None:
    a = make_loss(make_ctx(num_classes=100, student_size=64, seed=7))
    b = make_loss(make_ctx(num_classes=100, student_size=64, seed=7))
    c = make_loss(make_ctx(num_classes=100, student_size=64, seed=8))
    assert torch.equal(a.centres, b.centres) and not torch.equal(a.centres, c.centres)
    assert a.centres.shape == (100, 64)
    assert 0.0095 < float(a.centres.std()) < 0.0105 and abs(float(a.centres.mean())) < 1e-3

    a(torch.randn(4, 64), {"label": torch.tensor([3, 3, 50, 99])}, torch.randn(4, 64))
    assert "centres" in a.state_dict()
    c.load_state_dict(a.state_dict())
    assert torch.equal(c.centres, a.centres)

    from corecompress.engine.checkpoint import load_checkpoint_tensors, save_checkpoint

    path = save_checkpoint(tmp_path, "step1", model=torch.nn.Linear(2, 2), objective=a, optimizer=None, info={})
    assert torch.equal(load_checkpoint_tensors(path, "objective")["centres"], a.centres)


def test_size_mismatch_needs_projector() -> None:
    with pytest.raises(LossConfigError, match=r"student embedding size 8 .*teacher embedding size 4"):
        make_loss(make_ctx(student_size=8, teacher_size=4))
    loss = make_loss(make_ctx(student_size=8, teacher_size=4), projector=True)
    assert loss.centres.shape == (3, 4)
    assert [tuple(p.shape) for p in loss.parameters()] == [(4, 8)]
    student = torch.randn(3, 8, requires_grad=True)
    loss(student, {"label": torch.tensor([0, 1, 2])}, torch.randn(3, 4))["loss"].backward()
    assert loss.projector.weight.grad is not None and student.grad is not None
    with pytest.raises(LossConfigError, match="teacher embedding size is 5, expected 4"):
        loss(torch.randn(3, 8), {"label": torch.tensor([0, 1, 2])}, torch.randn(3, 5))


def test_options_margins_and_validation() -> None:
    assert (AdaDistill(AdaDistillOptions()).m1, AdaDistill(AdaDistillOptions()).m2) == (1.0, 0.45)
    cos = AdaDistill(AdaDistillOptions(margin="cosface"))
    assert (cos.m2, cos.m3) == (0.0, 0.35)
    combined = AdaDistill(parse_options(AdaDistillOptions, {"margin": "combined", "m1": 1.0, "m2": 0.3, "m3": 0.2}))
    assert (combined.m1, combined.m2, combined.m3) == (1.0, 0.3, 0.2)
    with pytest.raises(RecipeError, match="variant"):
        parse_options(AdaDistillOptions, {"variant": "adaptive"})
    with pytest.raises(RecipeError, match="did you mean 'variant'"):
        parse_options(AdaDistillOptions, {"varient": "plain"})
    with pytest.raises(RecipeError, match="m: not used with margin: combined"):
        parse_options(AdaDistillOptions, {"margin": "combined", "m": 0.5})
    with pytest.raises(RecipeError, match="m3: only used with margin: combined"):
        parse_options(AdaDistillOptions, {"m3": 0.2})


def test_missing_teacher_outputs_is_a_clear_error() -> None:
    with pytest.raises(LossConfigError, match="no teacher embeddings"):
        make_loss()(torch.randn(2, 4), {"label": torch.tensor([0, 1])}, None)


def test_registered_through_the_plugin() -> None:
    import corecompress_adadistill
    from corecompress.plugin.loading import load_plugins

    registry = load_plugins(autoload=False, extra=[("adadistill_test", corecompress_adadistill)]).registry
    component = registry.get("loss", "adadistill")
    loss = component.create(component.parse({"variant": "plain", "margin": "cosface"}, "train.objective"))
    assert isinstance(loss, AdaDistill) and loss.options.variant == "plain"
    assert component.needs_for(loss.options) == {"teacher"}


def test_short_training_aligns_student_with_teacher() -> None:
    """End to end: a linear student distilled from a fixed linear teacher moves towards it (c rises)."""
    torch.manual_seed(0)
    teacher = torch.nn.Linear(12, 8)
    student = torch.nn.Linear(12, 8)
    prototypes = torch.randn(4, 12) * 2
    loss = make_loss(make_ctx(num_classes=4, student_size=8), s=16.0, m=0.2)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    cs = []
    for _ in range(60):
        labels = torch.randint(0, 4, (16,))
        x = prototypes[labels] + 0.3 * torch.randn(16, 12)
        with torch.no_grad():
            f_t = teacher(x)
        parts = loss(student(x), {"label": labels}, f_t)
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
        cs.append(float(parts["c"]))
    assert sum(cs[-10:]) / 10 > cs[0] + 0.2


# --- DistributedDataParallel: centres identical across ranks -------------------------------------

WORLD, STEPS, DDP_CLASSES, DDP_DIM = 2, 3, 4, 6


def ddp_local_batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Different data (and batch sizes) per rank; labels repeat within and across ranks."""
    gen = torch.Generator().manual_seed(1000 * step + rank)
    size = 5 if rank == 0 else 3
    labels = torch.randint(0, DDP_CLASSES, (size,), generator=gen)
    f_t = torch.randn(size, DDP_DIM, generator=gen)
    return f_t + 0.5 * torch.randn(size, DDP_DIM, generator=gen), f_t, labels


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        loss = make_loss(make_ctx(num_classes=DDP_CLASSES, student_size=DDP_DIM))
        for step in range(STEPS):
            f_s, f_t, labels = ddp_local_batch(step, rank)
            loss(f_s, {"label": labels}, f_t)
        torch.save(loss.centres.clone(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_centres_identical_and_equal_to_ordered_single_process(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert torch.equal(per_rank[0], per_rank[1])

    reference = make_loss(make_ctx(num_classes=DDP_CLASSES, student_size=DDP_DIM))
    local_only = make_loss(make_ctx(num_classes=DDP_CLASSES, student_size=DDP_DIM))
    for step in range(STEPS):
        batches = [ddp_local_batch(step, r) for r in range(WORLD)]
        f_s, f_t, labels = (torch.cat(parts) for parts in zip(*batches))
        reference(f_s, {"label": labels}, f_t)
        local_only(batches[0][0], {"label": batches[0][2]}, batches[0][1])
    assert torch.equal(per_rank[0], reference.centres)
    assert not torch.allclose(per_rank[0], local_only.centres)   # the reference's drift would differ
