"""The contract between corecompress and its plugins, in the order the hooks fire.

Every hook is a pluggy hook specification. A plugin module implements any subset with
``@corecompress.hookimpl`` and is found through the ``corecompress`` entry-point group; the
built-in plugins (FACES, AdaDistill, face models, ...) use exactly the same path.

Registration hooks receive a ``register`` callback
(:class:`corecompress.plugin.protocols.Register`): ``register(name, factory, options=OptionsDataclass,
*, description="", needs=(), produces=(), declines_groups=False)``. ``factory(options)`` is called with the validated options
instance (or with no argument when ``options`` is None) and returns the component. Recipes choose
components by name. ``needs`` — what the component needs from the run: ``"teacher"``, ``"data"``
(calibration batches), ``"grad"``, or ``"artifact:NAME"`` (something another component produces), or a
function of the parsed options returning them — is declared here and nowhere else; ``produces`` names the
artifacts it hands to others (see :mod:`corecompress.engine.artifacts`); ``declines_groups=True`` lets an
importance leave groups unscored (they stay unpruned; the run says which). docs/plugins.md describes
each kind for authors.

An implementation may accept fewer arguments than its specification, so new arguments can be
added to a hook later without breaking plugins (pluggy's rule); arguments are never removed.

What each kind of component must provide is a :class:`typing.Protocol` in
:mod:`corecompress.plugin.protocols` (ModelAdapter, Dataset, Importance, Applier, Schedule, Loss,
Target, Evaluator, Reporter); :mod:`corecompress.testing.contracts` checks a component against it.
Implement hooks with ``@corecompress.hookimpl`` (``from corecompress import hookimpl``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from corecompress.plugin.protocols import (
        Applier, Dataset, Evaluator, Importance, Loss, ModelAdapter, Register, Reporter, Schedule, Target,
    )

PROJECT = "corecompress"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# --- registration (fired once, when the plugins are loaded) -------------------------------------

@hookspec
def register_models(register: Register[ModelAdapter]) -> None:
    """Register model adapters (build a model, expose its prunable groups, own architecture fix-ups)."""


@hookspec
def register_datasets(register: Register[Dataset]) -> None:
    """Register datasets (training data and named evaluation sets)."""


@hookspec
def register_importances(register: Register[Importance]) -> None:
    """Register importance criteria that score the units of prunable groups (higher = more important)."""


@hookspec
def register_appliers(register: Register[Applier]) -> None:
    """Register plan appliers: soft masking and physical removal of what a pruning plan drops."""


@hookspec
def register_schedules(register: Register[Schedule]) -> None:
    """Register schedules: pure functions of the step for learning rate, sparsity and loss weights."""


@hookspec
def register_losses(register: Register[Loss]) -> None:
    """Register training objectives and distillation losses (margin heads, AdaDistill, KD, ...)."""


@hookspec
def register_targets(register: Register[Target]) -> None:
    """Register distillation targets: what the teacher provides to a loss (live or cached embeddings)."""


@hookspec
def register_evaluators(register: Register[Evaluator]) -> None:
    """Register evaluators that turn a model and data into named metrics."""


@hookspec
def register_reporters(register: Register[Reporter]) -> None:
    """Register reporters that write human-readable results of a run."""


# --- lifecycle (fired while a recipe runs) -------------------------------------------------------

@hookspec
def on_stage_start(run: Any, stage: str) -> None:
    """Fires before each runner stage (build, train, evaluate_before, score, plan, apply, retrain,
    evaluate_after, export, report). ``run`` is the :class:`corecompress.engine.context.RunContext`."""


@hookspec
def after_physical_prune(run: Any, model: Any, plan: Any) -> None:
    """Fires right after a plan was physically applied; fix up anything the generic slicing
    (parameters, Linear/Conv/Norm sizes, the group's declared attributes) did not. ``run`` is None when
    a pruned model is rebuilt outside a run (``corecompress.load``)."""


@hookspec
def after_optimizer_step(run: Any, step: int, model: Any) -> None:
    """Fires after every optimizer step of training (masked pruning re-applies its masks here)."""


@hookspec
def on_stage_end(run: Any, stage: str, result: Any) -> None:
    """Fires after each runner stage with what the stage produced (None for most stages)."""


@hookspec
def report_sections(run: Any) -> list[tuple[str, str]] | None:
    """Return extra (title, markdown) sections for the run's report, or None."""
