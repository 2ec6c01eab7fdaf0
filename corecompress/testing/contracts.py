"""Contract checks every registered component must pass, by kind.

Used by corecompress's own tests (parametrised over the registry) and available to third-party
plugin authors through the ``contract_checks`` fixture of the pytest plugin. Each check raises
AssertionError with a message naming the component.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from corecompress.pruning.groups import check_groups
from corecompress.pruning.masking import apply_masks
from corecompress.pruning.physical import apply_physical
from corecompress.pruning.plan import make_plan
from corecompress.plugin.registry import Component
from corecompress.testing.data import synthetic_batches
from corecompress.testing.stand_ins import stand_in_model


def fake_context(seed: int = 0, num_classes: int = 5, embedding_size: int = 16, teacher: torch.nn.Module | None = None,
                 batches: list[dict[str, Any]] | None = None, out_dir: Path | None = None) -> Any:
    """A stand-in for RunContext with just what components read."""
    batches = batches or synthetic_batches(2, 8, (3, 16, 16), num_classes, seed)
    data = SimpleNamespace(num_classes=num_classes, train=lambda: _ListDataset(batches),
                           evaluation=lambda: {"test": _ListDataset(batches)})
    hook = SimpleNamespace(after_physical_prune=lambda **kw: None, after_optimizer_step=lambda **kw: None)
    prune = SimpleNamespace(calibration_batches=len(batches), sparsity=0.5)
    recipe = SimpleNamespace(seed=seed, prune=prune, retrain=SimpleNamespace(batch_size=len(batches[0]["label"])),
                             train=None)
    return SimpleNamespace(recipe=recipe, data=data, teacher=teacher, state={}, hook=hook, masks=None,
                           model_spec=SimpleNamespace(embedding_size=embedding_size,
                                                      input_size=tuple(batches[0]["image"].shape[1:])),
                           log=logging.getLogger("corecompress.contract"), out_dir=out_dir,
                           device=torch.device("cpu"), calibration=batches)


class _ListDataset(torch.utils.data.Dataset):
    """Un-collates a list of batches into samples."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.samples = [{k: v[i] for k, v in b.items()} for b in batches for i in range(len(b["label"]))]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.samples[i]


def _default(component: Component) -> Any:
    return component.create(component.parse({}, f"{component.kind}.{component.name}"))


def check_importance(component: Component) -> None:
    """Scores: one finite value per unit of every group; the same twice for the same seed."""
    stand_ins = ((stand_in_model("tiny_vit", num_outputs=5), ("channels", "heads", "neurons")),
                 (stand_in_model("tiny_cnn", num_outputs=5), ("filters",)))
    for (model, spec), targets in stand_ins:
        torch.manual_seed(0)
        model = model.eval()
        groups = spec.prunable_groups(model, targets)
        ctx = fake_context()
        first = _default(component).score(model, groups, ctx)
        second = _default(component).score(model, groups, ctx)
        for g in groups:
            if g.name not in first:
                continue  # an importance may decline groups it does not understand
            s = first[g.name]
            assert s.shape == (g.size,), f"importance {component.name}: {g.name} has {tuple(s.shape)} scores, not ({g.size},)"
            assert torch.isfinite(s).all(), f"importance {component.name}: non-finite scores for {g.name}"
            assert torch.equal(s, second[g.name]), f"importance {component.name}: not deterministic on {g.name}"
        assert first, f"importance {component.name} scored no group of {type(model).__name__}"


def check_applier(component: Component) -> None:
    """Applying a plan keeps the model runnable (forward + backward) and drops exactly the plan's units."""
    torch.manual_seed(0)
    model, spec = stand_in_model("tiny_vit", num_outputs=5)
    model = model.eval()
    groups = spec.prunable_groups(model, ("channels", "heads", "neurons"))
    plan = make_plan({g.name: torch.rand(g.size) for g in groups}, groups, 0.5)
    masked = copy.deepcopy(model)
    apply_masks(masked, groups, plan)
    out_model = _default(component).apply(copy.deepcopy(model), groups, plan, fake_context())
    x = torch.randn(2, 3, 16, 16)
    y = out_model(x)
    y.sum().backward()
    expected = masked(x)
    err = float((y - expected).norm() / expected.norm())
    assert err <= 1e-5, f"applier {component.name}: output differs from the masked model (rel. err {err:.2e})"


def check_schedule(component: Component) -> None:
    """A pure function of the step: finite, non-negative, the same value when asked twice."""
    schedule = _default(component)
    for total in (1, 10, 1000):
        for step in sorted({0, total // 2, total - 1}):
            v = schedule(step, total)
            assert isinstance(v, float) and v == v and v >= 0, f"schedule {component.name}({step}, {total}) = {v!r}"
            assert schedule(step, total) == v, f"schedule {component.name} is not a pure function of the step"


def check_loss(component: Component) -> None:
    """setup() then forward() on embeddings gives a finite scalar 'loss' that backpropagates."""
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 16)).eval()
    ctx = fake_context(teacher=teacher)
    loss = component.create(component.parse({}, f"loss.{component.name}"))
    try:
        loss.setup(ctx)
    except Exception as exc:  # noqa: BLE001
        if "needs" in str(exc) or "requires" in str(exc):
            return  # needs a resource (a teacher header file...) the generic check cannot supply
        raise
    batch = ctx.calibration[0]
    outputs = torch.randn(len(batch["label"]), ctx.model_spec.embedding_size, requires_grad=True)
    teacher_out = teacher(batch["image"]) if getattr(loss, "needs_teacher", False) else None
    parts = loss(outputs, batch, teacher_out)
    assert "loss" in parts, f"loss {component.name} returned no 'loss' entry"
    value = parts["loss"]
    assert value.ndim == 0 and torch.isfinite(value), f"loss {component.name}: loss is {value}"
    value.backward()
    assert outputs.grad is not None and torch.isfinite(outputs.grad).all(), f"loss {component.name}: no finite gradient"


def check_model(component: Component) -> None:
    """build() runs a forward pass at input_size; its groups are valid; masked ≡ physical for each kind."""
    spec = _default(component)
    model = spec.build().eval()
    x = torch.randn(2, *spec.input_size)
    with torch.no_grad():
        y = model(x)
    assert torch.isfinite(y).all(), f"model {component.name}: non-finite output"
    for kind in ("channels", "heads", "neurons", "filters"):
        groups = spec.prunable_groups(model, (kind,))
        if not groups:
            continue
        check_groups(model, groups)
        gen = torch.Generator().manual_seed(0)
        plan = make_plan({g.name: torch.rand(g.size, generator=gen) for g in groups}, groups, 0.5)
        masked, physical = copy.deepcopy(model), copy.deepcopy(model)
        apply_masks(masked, groups, plan)
        apply_physical(physical, groups, plan)
        with torch.no_grad():
            a, b = masked(x), physical(x)
        err = float((a - b).norm() / a.norm().clamp_min(1e-12))
        assert err <= 1e-5, f"model {component.name}: masked and physical differ for {kind} (rel. err {err:.2e})"
        n_dense = sum(p.numel() for p in model.parameters())
        n_phys = sum(p.numel() for p in physical.parameters())
        assert n_phys < n_dense, f"model {component.name}: physical pruning of {kind} removed no parameters"


CHECKS = {"importance": check_importance, "applier": check_applier, "schedule": check_schedule,
          "loss": check_loss, "model": check_model}


def check(component: Component) -> None:
    """Run the contract check of the component's kind (kinds without one pass)."""
    fn = CHECKS.get(component.kind)
    if fn is not None:
        fn(component)
