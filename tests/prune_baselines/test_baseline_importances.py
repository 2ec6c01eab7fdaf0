"""Baseline importances (plugins/corecompress_prune_baselines): taylor, nvit, vit_slim, and their scoring loss."""
from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from corecompress.errors import UserError
from corecompress.plugin.loading import load_plugins
from corecompress.pruning.groups import PrunableGroup, Slice
from corecompress.pruning.masking import apply_masks
from corecompress.pruning.plan import make_plan
from corecompress.testing.contracts import check_importance, fake_context
from corecompress_builtin.tiny_models import TinyCNN, TinyViT

from corecompress_prune_baselines.nvit import NViTImportance, NViTOptions
from corecompress_prune_baselines.objective import make_objective
from corecompress_prune_baselines.taylor import TaylorImportance, TaylorOptions
from corecompress_prune_baselines.vit_slim import ViTSlimImportance, ViTSlimOptions, attach_gates, detach_gates

REGISTRY = load_plugins().registry


class OneLayer(nn.Module):
    """y = W x (no bias): ∂L/∂W is known in closed form for the losses used below."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


ROWS = PrunableGroup(name="rows", kind="neurons", size=2, slices=(Slice("fc.weight", 0),))
COLS = PrunableGroup(name="cols", kind="channels", size=3, slices=(Slice("fc.weight", 1),))
W = torch.tensor([[1.0, -2.0, 0.5], [0.0, -1.0, 1.0]])


def batch(x: list[list[float]], labels: list[int]) -> dict:
    return {"image": torch.tensor(x, dtype=torch.float32), "label": torch.tensor(labels)}


@pytest.mark.parametrize("name", ["taylor", "nvit", "vit_slim"])
def test_contract(name):
    component = REGISTRY.get("importance", name)
    assert component.needs == {"data", "grad"}
    check_importance(component)


# --- taylor -------------------------------------------------------------------------------------

def test_taylor_embedding_norm_matches_hand_computation():
    """L = mean_b ½‖W x_b‖²  ⇒  Σ_j W_uj ∂L/∂W_uj = mean_b (W_u·x_b)²: rows y = (1.5, −1.5) and (1, 0)."""
    ctx = fake_context(batches=[batch([[1, 0, 1], [0, 1, 1]], [0, 1])])
    scores = TaylorImportance(TaylorOptions(loss="embedding_norm")).score(OneLayer(W), [ROWS, COLS], ctx)
    assert torch.allclose(scores["rows"], torch.tensor([2.25, 0.5]))
    # columns: W∘G with G = mean_b y_b x_bᵀ = [[.75, −.75, 0], [.5, 0, .5]] → per column |Σ_u|
    assert torch.allclose(scores["cols"], torch.tensor([0.75, 1.5, 0.5]))


def _ce_terms(weight: torch.Tensor, batches: list[dict]) -> list[torch.Tensor]:
    """Per batch, W∘∂CE/∂W from the closed form (softmax(Wx) − onehot) xᵀ / B."""
    out = []
    for b in batches:
        x, y = b["image"], b["label"]
        grad = (torch.softmax(x @ weight.T, 1) - nn.functional.one_hot(y, weight.shape[0])).T @ x / len(y)
        out.append(weight * grad)
    return out


@pytest.mark.parametrize("variant", ["group_abs_sum", "group_squared", "sum_abs"])
def test_taylor_cross_entropy_variants_average_over_batches(variant):
    batches = [batch([[1, 0, 1], [0, 1, 1]], [0, 1]), batch([[2, -1, 0], [0.5, 0.5, -1]], [1, 1])]
    ctx = fake_context(batches=batches, num_classes=2)
    scores = TaylorImportance(TaylorOptions(variant=variant, loss="ce")).score(OneLayer(W), [ROWS], ctx)
    per_batch = []
    for prod in _ce_terms(W, batches):
        signed, absolute = prod.sum(1), prod.abs().sum(1)
        per_batch.append({"group_abs_sum": signed.abs(), "group_squared": signed ** 2, "sum_abs": absolute}[variant])
    expected = (per_batch[0] + per_batch[1]) / 2
    assert torch.allclose(scores["rows"], expected, atol=1e-6)


def test_taylor_group_sum_cancels_where_sum_abs_does_not():
    batches = [batch([[2, 2, 1], [-2, 1, 2]], [1, 1])]
    ctx = fake_context(batches=batches, num_classes=2)
    group = TaylorImportance(TaylorOptions(variant="group_abs_sum", loss="ce")).score(OneLayer(W), [ROWS], ctx)["rows"]
    summed = TaylorImportance(TaylorOptions(variant="sum_abs", loss="ce")).score(OneLayer(W), [ROWS], ctx)["rows"]
    assert (group < summed - 0.1).all()            # opposite-signed contributions cancel in |Σ w·g|


def test_taylor_leaves_model_state_untouched():
    torch.manual_seed(0)
    model = TinyViT(num_outputs=5).train()
    model.blocks[1].eval()
    model.head.weight.requires_grad_(False)
    marker = torch.full_like(model.pos, 7.0)
    model.pos.grad = marker
    before = copy.deepcopy(model.state_dict())
    scores = TaylorImportance(TaylorOptions()).score(model, model.prunable_groups(), fake_context())
    assert set(scores) == {g.name for g in model.prunable_groups()}
    assert model.training and not model.blocks[1].training and model.blocks[0].training
    assert not model.head.weight.requires_grad and model.blocks[0].mlp.fc1.weight.requires_grad
    assert model.pos.grad is marker and model.blocks[0].mlp.fc1.weight.grad is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- the scoring loss -----------------------------------------------------------------------------

def test_auto_loss_picks_ce_for_logits_and_falls_back_when_teacher_is_the_model(caplog):
    torch.manual_seed(0)
    model = TinyViT(num_outputs=5).eval()
    ctx = fake_context(num_classes=5)
    assert make_objective("auto", model, ctx, ctx.calibration).name == "ce"
    embedder = TinyViT(num_outputs=16).eval()
    ctx = fake_context(num_classes=5, teacher=copy.deepcopy(embedder))
    with caplog.at_level(logging.INFO):
        assert make_objective("auto", embedder, ctx, ctx.calibration).name == "random_projection"
    ctx = fake_context(num_classes=5, teacher=TinyViT(num_outputs=16).eval())
    assert make_objective("auto", embedder, ctx, ctx.calibration).name == "teacher_cosine"
    # with the teacher equal to the model, teacher_cosine has zero gradient: every score is 0, and a warning says so
    same = fake_context(num_classes=5, teacher=copy.deepcopy(embedder))
    with caplog.at_level(logging.WARNING):
        zero = TaylorImportance(TaylorOptions(loss="teacher_cosine")).score(embedder, embedder.prunable_groups(), same)
    assert all(float(s.abs().max()) < 1e-8 for s in zero.values())
    assert "zero gradient" in caplog.text


def test_ce_on_an_embedding_model_is_a_user_error():
    model = TinyViT(num_outputs=3).eval()
    ctx = fake_context(num_classes=5)
    with pytest.raises(UserError, match="one output column per class"):
        TaylorImportance(TaylorOptions(loss="ce")).score(model, model.prunable_groups(), ctx)
    with pytest.raises(UserError, match="needs a teacher"):
        TaylorImportance(TaylorOptions(loss="teacher_cosine")).score(model, model.prunable_groups(), ctx)


def test_random_projection_squared_taylor_estimates_output_change():
    """For y = Wx, E_z[(Σ w·g)²] = Σ_b (W_u·x_b)²: the squared change of the outputs when row u goes."""
    gen = torch.Generator().manual_seed(3)
    batches = [{"image": torch.randn(1, 3, generator=gen), "label": torch.zeros(1, dtype=torch.long)} for _ in range(600)]
    ctx = fake_context(batches=batches)
    scores = TaylorImportance(TaylorOptions(variant="group_squared", loss="random_projection")).score(
        OneLayer(W), [ROWS], ctx)["rows"]
    x = torch.cat([b["image"] for b in batches])
    expected = (x @ W.T).pow(2).mean(0)           # mean over batches of (W_u·x_b)²
    assert torch.allclose(scores, expected, rtol=0.15)


# --- nvit ---------------------------------------------------------------------------------------

def test_nvit_divides_saliency_by_unit_cost():
    torch.manual_seed(0)
    model = TinyViT(num_outputs=5).eval()                   # dim 32, 4 heads of 8, hidden 64, 16 tokens
    groups = model.prunable_groups()
    ctx = fake_context()
    raw = NViTImportance(NViTOptions(normalize="none")).score(model, groups, ctx)
    by_params = NViTImportance(NViTOptions(normalize="params")).score(model, groups, ctx)
    by_macs = NViTImportance(NViTOptions(normalize="macs")).score(model, groups, ctx)
    squared = TaylorImportance(TaylorOptions(variant="group_squared")).score(model, groups, ctx)
    # parameters per unit: head = qkv rows 3·8·32 + bias 3·8 + proj columns 32·8; neuron = 32 + 1 + 32;
    # channel = a qkv column (96) or an fc1 column (64). MACs: weights only, × 16 tokens.
    params = {"heads": 1048, "mlp_hidden": 65, "attn_in": 96, "mlp_in": 64}
    macs = {"heads": (768 + 256) * 16, "mlp_hidden": 64 * 16, "attn_in": 96 * 16, "mlp_in": 64 * 16}
    for g in groups:
        suffix = g.name.split(".")[-1]
        assert torch.allclose(raw[g.name], squared[g.name])
        assert torch.allclose(by_params[g.name] * params[suffix], raw[g.name], rtol=1e-5)
        assert torch.allclose(by_macs[g.name] * macs[suffix], raw[g.name], rtol=1e-5)


def test_nvit_global_plan_keeps_more_of_the_more_salient_block(caplog):
    torch.manual_seed(0)
    model = TinyViT(num_outputs=5).eval()
    with torch.no_grad():
        model.blocks[0].mlp.fc2.weight.mul_(0.01)           # block 0's MLP barely reaches the output
    groups = model.prunable_groups(("neurons",))
    ctx = fake_context()
    ctx.recipe.prune.scope = "global"
    scores = NViTImportance(NViTOptions()).score(model, groups, ctx)
    plan = make_plan(scores, groups, 0.5, scope="global")
    kept0, kept1 = len(plan.groups["blocks.0.mlp_hidden"].keep), len(plan.groups["blocks.1.mlp_hidden"].keep)
    assert kept0 + kept1 == 64 and kept1 > kept0
    ctx.recipe.prune.scope = "local"
    with caplog.at_level(logging.WARNING):
        NViTImportance(NViTOptions()).score(model, groups, ctx)
    assert "prune.scope: global" in caplog.text


# --- vit_slim -----------------------------------------------------------------------------------

def test_gates_scale_unit_activations_like_masking():
    """Masks of 0/1 from a plan give the same outputs as zeroing the plan's units (all three kinds)."""
    torch.manual_seed(0)
    model = TinyViT(num_outputs=5).eval()
    groups = model.prunable_groups()
    plan = make_plan({g.name: torch.rand(g.size) for g in groups}, groups, 0.5)
    masks = {}
    for g in groups:
        m = torch.zeros(g.size)
        m[plan.keep_tensor(g.name)] = 1.0
        masks[g.name] = nn.Parameter(m)
    x = torch.randn(2, 3, 16, 16)
    masked = copy.deepcopy(model)
    apply_masks(masked, groups, plan)
    attached = attach_gates(model, groups, masks)
    with torch.no_grad():
        gated = model(x)
    detach_gates(model, attached)
    assert torch.allclose(gated, masked(x).detach(), atol=1e-6)
    assert not parametrize.is_parametrized(model.blocks[0].attn.proj)


@pytest.mark.parametrize("weight_lr", [0.0, 1e-3])
def test_vit_slim_restores_the_model_bit_identically(weight_lr):
    torch.manual_seed(0)
    model = TinyCNN(num_outputs=5).train()
    before = copy.deepcopy(model.state_dict())
    classes = {name: type(m) for name, m in model.named_modules()}
    opts = ViTSlimOptions(search_steps=5, weight_lr=weight_lr)
    scores = ViTSlimImportance(opts).score(model, model.prunable_groups(), fake_context())
    assert set(scores) == {"blocks.0.inner", "blocks.1.inner"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # BN statistics included
    assert {name: type(m) for name, m in model.named_modules()} == classes
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())


def test_vit_slim_drives_dead_units_down_at_the_budget_rate():
    """Units whose weights are zero get no task gradient: only the L1 budget moves their masks, so Adam
    lowers them by exactly lr per step (1 − 30·0.02 = 0.4), the fastest any mask can fall; units the
    task needs fall slower or rise."""
    torch.manual_seed(0)
    model = TinyViT(num_outputs=5).eval()
    dead = torch.tensor([3, 17, 40, 60])
    mlp = model.blocks[0].mlp
    with torch.no_grad():
        mlp.fc1.weight[dead] = 0
        mlp.fc1.bias[dead] = 0
        mlp.fc2.weight[:, dead] = 0
    groups = model.prunable_groups(("neurons",))
    scores = ViTSlimImportance(ViTSlimOptions(search_steps=30, lr=0.02, l1=1e-3)).score(model, groups, fake_context())
    hidden = scores["blocks.0.mlp_hidden"]
    assert torch.allclose(hidden[dead], torch.full((4,), 0.4), atol=1e-4)
    lowest = set(torch.argsort(hidden)[:8].tolist())
    assert set(dead.tolist()) <= lowest                      # among the 8 lowest of 64
    assert hidden.median() > 0.5
