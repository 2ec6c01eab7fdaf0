"""Pre-flight: each chosen component is called once on stand-in inputs of the run's real shapes before
anything trains, so a plugin that breaks its contract is one line naming the plugin, the component and
expected vs actual (exit 2) — not a traceback after hours of training.

- the training objectives (``train`` and ``retrain``): ``setup`` then ``forward`` on a few samples of the
  run's own data through a copy of the run's model; the result must be a dict holding a finite scalar
  ``"loss"`` tensor that requires grad (:func:`check_loss_parts`, also applied at the first real step);
- the importance, when a training phase comes before scoring: ``score`` on a copy of the model with one
  calibration batch; the scores must be a dict of finite ``(group.size,)`` tensors, one per group
  (:func:`check_scores`, also applied to every real scoring).

An importance may leave groups unscored only if it declares so (``register(..., declines_groups=True)``);
those groups stay unpruned and the log and report say which and why. Objectives that need an artifact
an earlier phase produces, and runs under torchrun (whose objectives may talk to other ranks), are checked
at their first real step only. Random-number streams are left as they were, so a run's results do not
depend on its pre-flight.
"""
from __future__ import annotations

import contextlib
import copy
import random
import traceback
import sys
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import default_collate

from corecompress.engine import distributed
from corecompress.errors import ComponentError, UserError
from corecompress.plugin.registry import Component, needed_artifacts
from corecompress.pruning.groups import PrunableGroup

#: Samples in the stand-in batch (fewer when the training batch is smaller).
STAND_IN_SAMPLES = 4
#: Group names an error lists before "(+N more)".
LISTED = 3


def component_label(component: Component) -> str:
    """``importance 'fpgm' (plugin 'fpgm', distribution 'corecompress-fpgm')``."""
    return f"{component.kind} '{component.name}' (plugin '{component.plugin}', distribution '{component.distribution}')"


def _listed(names: list[str]) -> str:
    more = f" (+{len(names) - LISTED} more)" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more


def check_scores(scores: Any, groups: list[PrunableGroup], component: Component) -> list[str]:
    """Raise :class:`ComponentError` unless ``scores`` is a dict of finite ``(group.size,)`` tensors for
    every group (or, for an importance registered with ``declines_groups=True``, for at least one);
    returns the names of the groups left unscored."""
    label = component_label(component)
    if not isinstance(scores, dict):
        raise ComponentError(f"{label}: score() returned a {type(scores).__name__}; expected a dict "
                             "{group name: tensor of shape (group size,)}")
    by_name = {g.name: g for g in groups}
    unknown = sorted(str(k) for k in scores if k not in by_name)
    if unknown:
        raise ComponentError(f"{label}: score() gave scores for groups the model does not have: {_listed(unknown)}"
                             f" (its groups: {_listed(list(by_name))})")
    for name, value in scores.items():
        size = by_name[name].size
        if not isinstance(value, torch.Tensor):
            raise ComponentError(f"{label}: score() gave group {name} a {type(value).__name__}; expected a "
                                 f"torch.Tensor of shape ({size},)")
        if tuple(value.shape) != (size,):
            raise ComponentError(f"{label}: score() gave group {name} scores of shape {tuple(value.shape)}; "
                                 f"expected shape ({size},), one score per unit")
        if value.is_complex() or not torch.isfinite(value.detach().float()).all():
            raise ComponentError(f"{label}: score() gave group {name} non-finite scores (NaN or inf); "
                                 "expected finite numbers")
    missing = [g.name for g in groups if g.name not in scores]
    if missing and not component.declines_groups:
        raise ComponentError(f"{label}: score() scored {len(scores)} of {len(groups)} groups; missing "
                             f"{_listed(missing)}. An importance that may decline groups says so when it is "
                             "registered: register(..., declines_groups=True)")
    if len(missing) == len(groups):
        raise ComponentError(f"{label}: score() declined every group ({_listed(missing)}); nothing would be pruned")
    return missing


def declined_reasons(importance: Any, missing: list[str], component: Component) -> dict[str, str]:
    """Why each unscored group was left alone: the importance's own ``declined`` mapping (group name ->
    reason) where it has one, else that it declined the group."""
    own = getattr(importance, "declined", None)
    own = own if isinstance(own, dict) else {}
    return {name: str(own.get(name) or f"not scored by importance '{component.name}'") for name in missing}


def check_loss_parts(parts: Any, component: Component, phase: str, *, finite: bool = True) -> None:
    """Raise :class:`ComponentError` unless the objective's result is a dict with a scalar ``"loss"``
    tensor that requires grad (and, with ``finite``, is finite)."""
    label = f"{phase}.objective: {component_label(component)}"
    if not isinstance(parts, dict):
        raise ComponentError(f"{label}: forward() returned a {type(parts).__name__}; expected a dict with a scalar "
                             "'loss' tensor")
    if "loss" not in parts:
        raise ComponentError(f"{label}: forward() returned a dict without 'loss' (keys: {_listed(sorted(map(str, parts)))})")
    value = parts["loss"]
    if not isinstance(value, torch.Tensor):
        raise ComponentError(f"{label}: 'loss' is a {type(value).__name__}; expected a scalar torch.Tensor")
    if value.ndim != 0:
        raise ComponentError(f"{label}: 'loss' has shape {tuple(value.shape)}; expected a scalar (shape ())")
    if not value.requires_grad:
        raise ComponentError(f"{label}: 'loss' does not require grad (is it detached from the model's outputs?); "
                             "training would not change the model")
    if finite and not bool(torch.isfinite(value.detach())):
        raise ComponentError(f"{label}: 'loss' is {float(value)} on a stand-in batch of the run's data; "
                             "expected a finite number")


def preflight(ctx: Any) -> None:
    """Check the run's objectives and importance on stand-in inputs (see the module docstring)."""
    phases = [phase for phase in ("train", "retrain") if getattr(ctx.recipe, phase) is not None]
    if distributed.world() > 1 or not (phases or _scored_after_training(ctx)):
        return
    checked: list[str] = []
    with _streams_kept():
        batch = _stand_in_batch(ctx)
        model = copy.deepcopy(ctx.model)  # one throwaway copy: the run's model is never touched
        teacher = _stand_in_teacher(ctx, ctx.model)
        for phase in phases:
            section = getattr(ctx.recipe, phase)
            if _check_objective(ctx, phase, section, batch, model, teacher):
                checked.append(f"{phase}.objective '{section.objective.name}'")
        if _scored_after_training(ctx):
            _check_importance(ctx, batch, model, teacher)
            checked.append(f"importance '{ctx.recipe.prune.importance.name}'")
    if checked:
        ctx.log.info("pre-flight: %s called on stand-in inputs of this run's shapes: ok", ", ".join(checked))


def _scored_after_training(ctx: Any) -> bool:
    """Scoring waits for a training phase: the importance is tried first (otherwise scoring itself comes
    before any training, and its scores are checked then)."""
    p = ctx.recipe.prune
    return p is not None and ctx.recipe.train is not None and not p.plan and not ctx.resume_plan


def _stand_in_batch(ctx: Any) -> dict[str, Any]:
    """The first few samples of the run's training data, collated, on the run's device."""
    section = ctx.recipe.train or ctx.recipe.retrain
    size = min(STAND_IN_SAMPLES, section.batch_size) if section is not None else STAND_IN_SAMPLES
    data = ctx.data.train()
    batch = default_collate([data[i] for i in range(min(size, len(data)))])
    return {k: v.to(ctx.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _stand_in_teacher(ctx: Any, model: torch.nn.Module) -> torch.nn.Module | None:
    """The run's teacher; with ``teacher: {}`` (the model before pruning, made after training) a frozen
    copy of the model, which has the same shapes."""
    if ctx.teacher is not None:
        return ctx.teacher
    if ctx.recipe.teacher is None:
        return None
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class _StandInContext:
    """The run's context with some attributes replaced; what a component writes stays here."""

    def __init__(self, ctx: Any, **overrides: Any) -> None:
        self._ctx = ctx
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def _check_objective(ctx: Any, phase: str, section: Any, batch: dict[str, Any], model: torch.nn.Module,
                     teacher: torch.nn.Module | None) -> bool:
    """False when the objective cannot be tried yet (it needs an artifact an earlier phase produces)."""
    component = ctx.registry.get("loss", section.objective.name, f"{phase}.objective")
    needs = component.needs_for(section.objective.options)
    if any(ctx.artifacts.get(name) is None for name in needed_artifacts(needs)):
        return False
    model.train()
    teacher = teacher if "teacher" in needs else None
    view = _StandInContext(ctx, teacher=teacher, state={}, metrics={})
    with as_component_error(component, f"{phase}.objective: "):
        objective = ctx.create("loss", section.objective).to(ctx.device)
        setup = getattr(objective, "setup", None)
        if callable(setup):
            setup(view)
        outputs = model(batch["image"])
        with torch.no_grad():
            teacher_outputs = teacher(batch["image"]) if teacher is not None else None
        parts = objective(outputs, dict(batch), teacher_outputs)
    check_loss_parts(parts, component, phase)
    return True


def _check_importance(ctx: Any, batch: dict[str, Any], model: torch.nn.Module,
                      teacher: torch.nn.Module | None) -> None:
    p = ctx.recipe.prune
    component = ctx.registry.get("importance", p.importance.name, "prune.importance")
    model.eval()
    groups = ctx.model_spec.prunable_groups(model, tuple(p.targets))
    if not groups:
        return  # the score stage reports it
    view = _StandInContext(ctx, teacher=teacher, calibration=[batch], state={}, metrics={})
    with as_component_error(component, "prune.importance: "):
        scores = ctx.create("importance", p.importance).score(model, groups, view)
    check_scores(scores, groups, component)


@contextlib.contextmanager
def as_component_error(component: Component, prefix: str,
                        during: str = "on stand-in inputs of this run's shapes") -> Iterator[None]:
    """A component's own exception (on stand-in inputs, or ``during`` the real call) as one line naming
    it (``--debug``: its traceback)."""
    try:
        yield
    except (UserError, OSError, torch.cuda.OutOfMemoryError):  # the user's input, the machine: reported as such
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's failure, reported as the contract it breaks
        from corecompress.plugin.loading import debug_tracebacks

        if debug_tracebacks():
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ComponentError(f"{prefix}{component_label(component)} failed {during}: "
                             f"{type(exc).__name__}: {first}") from None


@contextlib.contextmanager
def _streams_kept() -> Iterator[None]:
    """Python's, NumPy's and torch's random streams (CPU and CUDA) are as before afterwards."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)
