"""Contract checks every registered component must pass, one per kind.

Used by corecompress's own tests (over everything registered) and by third-party plugin authors through
the ``contract_checks`` fixture of the pytest plugin. Every kind has a check and nothing passes
unchecked: what a component declares it needs (a teacher, calibration data, an artifact another
component produces) is supplied as a stand-in — a small random teacher, synthetic batches, the
artifact made by a registered producer — and a component that cannot be built from its defaults
(a dataset that needs a path) must be given ``options``. Each check raises AssertionError naming the
component, and returns a :class:`Checked` record of what it exercised.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch

from corecompress.engine.artifacts import ArtifactStore, objective_artifacts
from corecompress.engine.preflight import check_scores
from corecompress.errors import ComponentError, UserError
from corecompress.plugin.protocols import PROTOCOLS
from corecompress.plugin.registry import Component, Registry, needed_artifacts
from corecompress.pruning.groups import check_groups
from corecompress.pruning.masking import apply_masks
from corecompress.pruning.physical import apply_physical
from corecompress.pruning.plan import make_plan
from corecompress.testing.data import synthetic_batches
from corecompress.testing.stand_ins import stand_in_model

#: The stand-in models of importance and applier checks: (registered model, options, group kinds).
STAND_IN_MODELS: tuple[tuple[str, dict[str, Any], tuple[str, ...]], ...] = (
    ("tiny_vit", {"num_outputs": 5}, ("channels", "heads", "neurons")),
    ("tiny_cnn", {"num_outputs": 5}, ("filters",)),
)
GROUP_KINDS = ("channels", "heads", "neurons", "filters")


@dataclass
class Checked:
    """What a check exercised: the component and one line of detail."""

    kind: str
    name: str
    detail: str


_REGISTRY: list[Registry] = []


def default_registry() -> Registry:
    """The registry of the installed plugins (loaded once), for stand-ins and ``check("kind/name")``."""
    if not _REGISTRY:
        from corecompress.plugin.loading import load_plugins

        _REGISTRY.append(load_plugins().registry)
    return _REGISTRY[0]


def fake_context(seed: int = 0, num_classes: int = 5, embedding_size: int = 16, teacher: torch.nn.Module | None = None,
                 batches: list[dict[str, Any]] | None = None, out_dir: Path | None = None,
                 registry: Registry | None = None) -> Any:
    """A stand-in for RunContext with just what components read."""
    batches = batches or synthetic_batches(2, 8, (3, 16, 16), num_classes, seed)
    data = SimpleNamespace(num_classes=num_classes, train=lambda: _ListDataset(batches),
                           evaluation=lambda: {"test": _ListDataset(batches)})
    hook = SimpleNamespace(after_physical_prune=lambda **kw: None, after_optimizer_step=lambda **kw: None,
                           report_sections=lambda **kw: [])
    prune = SimpleNamespace(calibration_batches=len(batches), sparsity=0.5)
    recipe = SimpleNamespace(seed=seed, prune=prune, retrain=SimpleNamespace(batch_size=len(batches[0]["label"])),
                             train=None, teacher=None)
    producers = registry.producers_of if registry is not None else (lambda name: [])
    return SimpleNamespace(recipe=recipe, data=data, teacher=teacher, state={}, hook=hook, masks=None,
                           model_spec=SimpleNamespace(embedding_size=embedding_size,
                                                      input_size=tuple(batches[0]["image"].shape[1:])),
                           log=logging.getLogger("corecompress.contract"), out_dir=out_dir,
                           device=torch.device("cpu"), precision="fp32", calibration=batches,
                           artifacts=ArtifactStore(out_dir, producers=producers), registry=registry)


class _ListDataset(torch.utils.data.Dataset):
    """Un-collates a list of batches into samples."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.samples = [{k: v[i] for k, v in b.items()} for b in batches for i in range(len(b["label"]))]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.samples[i]


def stand_in_teacher(embedding_size: int = 16, input_size: tuple[int, int, int] = (3, 16, 16)) -> torch.nn.Module:
    """A small frozen random teacher giving ``embedding_size``-d embeddings."""
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(input_size), embedding_size)).eval()
    teacher.embedding_size = embedding_size  # type: ignore[attr-defined]
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _build(component: Component, options: dict[str, Any] | None) -> tuple[Any, Any]:
    """(the component instance, its parsed options)."""
    try:
        parsed = component.parse(dict(options or {}), f"{component.kind}.{component.name}")
    except UserError as exc:
        raise AssertionError(f"{component.kind} {component.name}: cannot be built from "
                             f"{'its defaults' if not options else 'the given options'} ({exc}); "
                             "pass options= to the check") from None
    instance = component.create(parsed)
    protocol = PROTOCOLS[component.kind]
    if not isinstance(instance, protocol):
        missing = [m for m in protocol.__protocol_attrs__ if not hasattr(instance, m)] \
            if hasattr(protocol, "__protocol_attrs__") else []
        raise AssertionError(f"{component.kind} {component.name}: does not provide the {protocol.__name__} protocol"
                             + (f" (missing: {', '.join(sorted(missing))})" if missing else ""))
    return instance, parsed


def _model(registry: Registry, name: str, options: dict[str, Any]) -> tuple[Any, torch.nn.Module]:
    torch.manual_seed(0)
    model, spec = stand_in_model(name, registry, **options)
    return spec, model.eval()


def _supply(component: Component, parsed: Any, ctx: Any, registry: Registry) -> frozenset[str]:
    """Give ``ctx`` what the component declares it needs; returns the needs."""
    needs = component.needs_for(parsed)
    if "teacher" in needs:
        ctx.teacher = stand_in_teacher(ctx.model_spec.embedding_size, ctx.model_spec.input_size)
    for artifact in needed_artifacts(needs):
        _make_artifact(artifact, ctx, registry, component)
    return needs


def _make_artifact(name: str, ctx: Any, registry: Registry, consumer: Component) -> None:
    """Publish ``name`` into ``ctx.artifacts`` as a registered loss that produces it makes it."""
    for producer in registry.components["loss"].values():
        if name not in producer.produces or producer.needs_for(producer.parse({}, "producer")):
            continue
        loss = producer.create(producer.parse({}, f"loss.{producer.name}"))
        loss.setup(ctx)
        offered = objective_artifacts(loss)
        if name in offered:
            ctx.artifacts.publish(name, offered[name], phase="train", producer=producer.name)
            return
    raise AssertionError(f"{consumer.kind} {consumer.name}: needs the artifact '{name}', and no registered loss "
                         "without needs of its own produces it for the check")


def check_importance(component: Component, options: dict[str, Any] | None = None,
                     registry: Registry | None = None) -> Checked:
    """Scores: a dict of (group.size,) finite tensors for every group of the stand-in models (an importance
    registered with ``declines_groups=True``: for some), the same twice for the same seed — the checks
    every run applies (:func:`corecompress.engine.preflight.check_scores`)."""
    registry = registry or default_registry()
    scored = 0
    for model_name, model_options, targets in STAND_IN_MODELS:
        spec, model = _model(registry, model_name, model_options)
        groups = spec.prunable_groups(model, targets)
        ctx = fake_context(embedding_size=spec.embedding_size, registry=registry)
        importance, parsed = _build(component, options)
        _supply(component, parsed, ctx, registry)
        first = importance.score(model, groups, ctx)
        second = _build(component, options)[0].score(model, groups, ctx)
        if first or not component.declines_groups:  # one that declines may skip a whole stand-in model
            try:
                check_scores(first, groups, component)
            except ComponentError as exc:
                raise AssertionError(str(exc)) from None
        for name, s in first.items():
            assert torch.equal(s, second[name]), f"importance {component.name}: not deterministic on {name}"
            scored += 1
    assert scored, f"importance {component.name} scored no group of the stand-in models"
    return Checked("importance", component.name, f"{scored} groups scored")


def check_applier(component: Component, options: dict[str, Any] | None = None,
                  registry: Registry | None = None) -> Checked:
    """Applying a plan keeps the model runnable (forward + backward) and equal to the masked model."""
    registry = registry or default_registry()
    spec, model = _model(registry, "tiny_vit", {"num_outputs": 5})
    groups = spec.prunable_groups(model, GROUP_KINDS)
    gen = torch.Generator().manual_seed(0)
    plan = make_plan({g.name: torch.rand(g.size, generator=gen) for g in groups}, groups, 0.5)
    masked = copy.deepcopy(model)
    apply_masks(masked, groups, plan)
    out_model = _build(component, options)[0].apply(copy.deepcopy(model), groups, plan, fake_context(registry=registry))
    assert isinstance(out_model, torch.nn.Module), f"applier {component.name}: apply() returned no module"
    x = torch.randn(2, *spec.input_size)
    y = out_model(x)
    y.sum().backward()
    with torch.no_grad():
        expected = masked(x)
    err = float((y.detach() - expected).norm() / expected.norm())
    assert err <= 1e-5, f"applier {component.name}: output differs from the masked model (rel. err {err:.2e})"
    return Checked("applier", component.name, f"{len(groups)} groups applied")


def check_schedule(component: Component, options: dict[str, Any] | None = None,
                   registry: Registry | None = None) -> Checked:
    """A pure function of the step: a finite, non-negative float, the same value when asked twice."""
    schedule = _build(component, options)[0]
    for total in (1, 10, 1000):
        for step in sorted({0, total // 2, total - 1}):
            v = schedule(step, total)
            assert isinstance(v, float) and math.isfinite(v) and v >= 0, f"schedule {component.name}({step}, {total}) = {v!r}"
            assert schedule(step, total) == v, f"schedule {component.name} is not a pure function of the step"
    return Checked("schedule", component.name, "9 steps")


def check_loss(component: Component, options: dict[str, Any] | None = None,
               registry: Registry | None = None) -> Checked:
    """With what it declares it needs supplied (and nothing else: no teacher unless declared),
    setup() then forward() gives a finite scalar 'loss' that backpropagates; every artifact it offers
    is one it declared it produces."""
    registry = registry or default_registry()
    torch.manual_seed(0)
    ctx = fake_context(registry=registry)
    loss, parsed = _build(component, options)
    needs = _supply(component, parsed, ctx, registry)
    batch = ctx.calibration[0]
    outputs = torch.randn(len(batch["label"]), ctx.model_spec.embedding_size, requires_grad=True)
    try:
        setup = getattr(loss, "setup", None)
        if callable(setup):
            setup(ctx)
        teacher_out = ctx.teacher(batch["image"]) if "teacher" in needs else None
        parts = loss(outputs, batch, teacher_out)
    except Exception as exc:  # noqa: BLE001 - reported as the contract it breaks
        raise AssertionError(f"loss {component.name}: setup/forward failed with what it declares it needs supplied "
                             f"(needs={sorted(needs)}): {type(exc).__name__}: {exc}") from exc
    assert isinstance(parts, dict) and "loss" in parts, f"loss {component.name} returned no 'loss' entry"
    value = parts["loss"]
    assert isinstance(value, torch.Tensor) and value.ndim == 0 and torch.isfinite(value), \
        f"loss {component.name}: loss is {value!r}, not a finite scalar tensor"
    value.backward()
    assert outputs.grad is not None and torch.isfinite(outputs.grad).all(), f"loss {component.name}: no finite gradient"
    on_train_end = getattr(loss, "on_train_end", None)
    if callable(on_train_end):
        on_train_end(ctx)
    offered = set(objective_artifacts(loss))
    undeclared = sorted(offered - component.produces)
    assert not undeclared, f"loss {component.name}: offers artifacts {undeclared} it did not declare (produces=)"
    return Checked("loss", component.name, f"needs {sorted(needs) or 'nothing'}, offers {sorted(offered) or 'nothing'}")


def check_model(component: Component, options: dict[str, Any] | None = None,
                registry: Registry | None = None) -> Checked:
    """build() runs a forward pass at input_size; its groups are valid; masked ≡ physical for each
    group kind alone and for all of them pruned together, and physical pruning removes parameters."""
    spec = _build(component, options)[0]
    torch.manual_seed(0)
    model = spec.build().eval()
    x = torch.randn(2, *spec.input_size)
    with torch.no_grad():
        y = model(x)
    assert torch.isfinite(y).all(), f"model {component.name}: non-finite output"
    kinds = [k for k in GROUP_KINDS if spec.prunable_groups(model, (k,))]
    for chosen in [(k,) for k in kinds] + ([tuple(kinds)] if len(kinds) > 1 else []):
        groups = spec.prunable_groups(model, chosen)
        check_groups(model, groups)
        gen = torch.Generator().manual_seed(0)
        plan = make_plan({g.name: torch.rand(g.size, generator=gen) for g in groups}, groups, 0.5)
        masked, physical = copy.deepcopy(model), copy.deepcopy(model)
        try:
            apply_masks(masked, groups, plan)
            apply_physical(physical, groups, plan)
            with torch.no_grad():
                a, b = masked(x), physical(x)
        except Exception as exc:  # noqa: BLE001 - reported as the contract it breaks
            raise AssertionError(f"model {component.name}: pruning {'+'.join(chosen)} fails: "
                                 f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        assert a.shape == b.shape, f"model {component.name}: physical pruning of {'+'.join(chosen)} changed the output shape"
        err = float((a - b).norm() / a.norm().clamp_min(1e-12))
        assert err <= 1e-5, f"model {component.name}: masked and physical differ for {'+'.join(chosen)} (rel. err {err:.2e})"
        n_dense = sum(p.numel() for p in model.parameters())
        n_phys = sum(p.numel() for p in physical.parameters())
        assert n_phys < n_dense, f"model {component.name}: physical pruning of {'+'.join(chosen)} removed no parameters"
    return Checked("model", component.name, f"kinds {'+'.join(kinds) or 'none'}")


def check_dataset(component: Component, options: dict[str, Any] | None = None,
                  registry: Registry | None = None) -> Checked:
    """``num_classes`` ≥ 1 (or 0 for attribute-only data, whose samples then carry ``attributes``);
    ``train()`` a non-empty dataset of dict samples with a float (C, H, W) ``image``, an integer
    ``label`` in range and, if present, 1-D ``attributes``; ``evaluation()`` a dict."""
    data = _build(component, options)[0]
    k = data.num_classes
    assert isinstance(k, int) and k >= 0, f"dataset {component.name}: num_classes is {k!r}"
    train = data.train()
    assert len(train) >= 1, f"dataset {component.name}: train() is empty"
    for i in sorted({0, len(train) - 1}):
        sample = train[i]
        assert isinstance(sample, dict), f"dataset {component.name}: sample {i} is a {type(sample).__name__}, not a dict"
        image = sample.get("image")
        assert isinstance(image, torch.Tensor) and image.ndim == 3 and image.is_floating_point(), \
            f"dataset {component.name}: sample {i} has no float (C, H, W) 'image'"
        if k:
            label = int(sample["label"])
            assert 0 <= label < k, f"dataset {component.name}: sample {i} has label {label} outside [0, {k})"
        else:
            assert "attributes" in sample, f"dataset {component.name}: num_classes is 0 and samples have no attributes"
        if "attributes" in sample:
            assert torch.as_tensor(sample["attributes"]).ndim == 1, f"dataset {component.name}: attributes not 1-D"
    sets = data.evaluation()
    assert isinstance(sets, dict), f"dataset {component.name}: evaluation() returned {type(sets).__name__}, not a dict"
    return Checked("dataset", component.name, f"{len(train)} training samples, {k} classes, {len(sets)} evaluation sets")


def check_target(component: Component, options: dict[str, Any] | None = None,
                 registry: Registry | None = None) -> Checked:
    """prepare(teacher, dataset, ctx), then the teacher outputs of a batch: one finite row per sample,
    equal to the stand-in teacher's own embeddings. Caches go to a temporary folder."""
    registry = registry or default_registry()
    ctx = fake_context(registry=registry)
    teacher = stand_in_teacher()
    ctx.teacher = teacher
    target = _build(component, options)[0]
    with tempfile.TemporaryDirectory() as cache, _environment(CORECOMPRESS_CACHE=cache):
        target.prepare(teacher, ctx.data.train(), ctx)
        batch = ctx.calibration[1]
        out = target(batch)
    assert isinstance(out, torch.Tensor) and out.shape[0] == len(batch["label"]), \
        f"target {component.name}: outputs for a batch of {len(batch['label'])} have shape {getattr(out, 'shape', None)}"
    assert torch.isfinite(out).all(), f"target {component.name}: non-finite teacher outputs"
    with torch.no_grad():
        direct = teacher(batch["image"])
    err = float((out.float() - direct).norm() / direct.norm().clamp_min(1e-12))
    assert err <= 1e-2, f"target {component.name}: outputs differ from the teacher's (rel. err {err:.2e})"
    return Checked("target", component.name, f"rel. err {err:.1e} vs the teacher")


def check_evaluator(component: Component, options: dict[str, Any] | None = None, registry: Registry | None = None,
                    model: str = "tiny_vit", model_options: dict[str, Any] | None = None, data: str = "synthetic_prototypes",
                    data_options: dict[str, Any] | None = None) -> Checked:
    """evaluate(model, data, ctx) on a registered stand-in model and dataset gives numbers, at least one
    of them finite and none infinite (NaN = not measurable on so little data, e.g. TAR at a FAR below
    1 / impostor pairs). Face evaluators are checked on a face model and face data: pass them."""
    registry = registry or default_registry()
    spec, built = _model(registry, model, dict(model_options or {}))
    dataset = registry.get("dataset", data).create(registry.get("dataset", data).parse(dict(data_options or {}), "data"))
    ctx = fake_context(embedding_size=getattr(spec, "embedding_size", 16), registry=registry)
    ctx.model_spec, ctx.data = spec, dataset
    evaluator, parsed = _build(component, options)
    _supply(component, parsed, ctx, registry)
    metrics = evaluator.evaluate(built, dataset, ctx)
    assert isinstance(metrics, dict) and metrics, f"evaluator {component.name}: no metrics on {model} + {data}"
    bad = {k: v for k, v in metrics.items() if not isinstance(v, (int, float)) or math.isinf(v)}
    assert not bad, f"evaluator {component.name}: metrics that are not numbers or infinite: {sorted(bad)[:3]}"
    assert any(math.isfinite(v) for v in metrics.values()), f"evaluator {component.name}: no finite metric"
    return Checked("evaluator", component.name, f"{len(metrics)} metrics on {model} + {data}")


def check_reporter(component: Component, options: dict[str, Any] | None = None,
                   registry: Registry | None = None) -> Checked:
    """write(run) of a finished stand-in run writes at least one non-empty file into the run directory."""
    from corecompress.config.recipe import validate_recipe

    registry = registry or default_registry()
    recipe = validate_recipe({"version": 1, "name": "contract", "model": "tiny_vit", "data": "synthetic_prototypes"},
                             registry)
    with tempfile.TemporaryDirectory() as out:
        ctx = fake_context(out_dir=Path(out), registry=registry)
        ctx.recipe, ctx.plan, ctx.timings = recipe, None, {"train": 1.0}
        ctx.metrics = {"before": {"accuracy/test": 0.5, "efficiency/params": 100}, "after": {"accuracy/test": 0.4}}
        _build(component, options)[0].write(ctx)
        written = [p for p in Path(out).rglob("*") if p.is_file() and p.stat().st_size > 0]
        assert written, f"reporter {component.name}: wrote nothing into the run directory"
        return Checked("reporter", component.name, ", ".join(sorted(p.name for p in written)))


class _environment:
    """Set environment variables for the duration of a ``with`` block."""

    def __init__(self, **values: str) -> None:
        self.values, self.saved = values, {}

    def __enter__(self) -> None:
        for k, v in self.values.items():
            self.saved[k] = os.environ.get(k)
            os.environ[k] = v

    def __exit__(self, *exc: Any) -> None:
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


CHECKS: dict[str, Callable[..., Checked]] = {
    "model": check_model, "dataset": check_dataset, "importance": check_importance, "applier": check_applier,
    "schedule": check_schedule, "loss": check_loss, "target": check_target, "evaluator": check_evaluator,
    "reporter": check_reporter,
}


def check(component: Component | str, options: dict[str, Any] | None = None, **stand_ins: Any) -> Checked:
    """Run the contract check of the component's kind. ``component``: a registered
    :class:`~corecompress.plugin.registry.Component` or ``"kind/name"``; ``options``: recipe options
    for one that cannot be built from its defaults; ``stand_ins``: e.g. ``model=``/``data=`` names for
    an evaluator."""
    if isinstance(component, str):
        kind, _, name = component.partition("/")
        component = default_registry().get(kind, name, "check")
    if not isinstance(component, Component):
        raise TypeError(f"check() takes a registered component or 'kind/name', not a {type(component).__name__} "
                        "instance (e.g. check('importance/my_importance'))")
    return CHECKS[component.kind](component, options, **stand_ins)
