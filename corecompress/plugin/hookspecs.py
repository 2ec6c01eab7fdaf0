"""The contract between corecompress and its plugins, in the order the hooks fire.

Every hook is a pluggy hook specification. A plugin module implements any subset with
``@corecompress.hookimpl`` and is found through the ``corecompress`` entry-point group; the
built-in plugins (FACES, AdaDistill, face models, ...) use exactly the same path.

Registration hooks receive a ``register(name, factory, options=OptionsDataclass, *, description="",
needs=())`` callback. ``factory(options)`` is called with the validated options instance (or with no
argument when ``options`` is None) and returns the component. Recipes choose components by name.

An implementation may accept fewer arguments than its specification, so new arguments can be
added to a hook later without breaking plugins (pluggy's rule); arguments are never removed.

Component protocols (each at most three required methods):

- model: ``build() -> nn.Module``; ``prunable_groups(model, targets) -> list[PrunableGroup]``;
  attribute ``input_size`` (C, H, W). Optional: ``embedding_size``, ``load_weights(model, path)``.
- dataset: ``train() -> Dataset`` of dict samples (``image``, ``label``, optional ``attributes``);
  ``evaluation() -> dict[str, Any]`` of named evaluation sets; attribute ``num_classes``.
- importance: ``score(model, groups, context) -> dict[group name, Tensor]`` (higher = keep);
  attribute ``needs`` ⊆ {"data", "grad"} (also given at registration).
- applier: ``apply(model, groups, plan, context) -> nn.Module`` (the model to train from now on).
- schedule: ``__call__(step, total_steps) -> float`` — a pure function of the step. As a learning-rate
  or loss-weight schedule: the multiplier at optimizer step ``step`` (0-based) of ``total_steps``. As a
  sparsity ramp (``prune.ramp``; Zhu & Gupta 2018, "To prune, or not to prune"): called as
  ``ramp(k, rounds)`` for gradual-pruning round k = 1..rounds, it returns the FRACTION OF THE FINAL
  SPARSITY reached after round k — conceptually 0 before the first round (k = 0) and 1 at k = rounds —
  and round k prunes to ``prune.sparsity · ramp(k, rounds)``. The values must lie in [0, 1], never
  decrease (a pruned unit stays pruned) and reach 1 at the last round; recipes are refused otherwise.
  Built in: ``sparsity_cubic`` 1 − (1 − k/R)³ and ``sparsity_linear`` k/R (``ramp: cubic`` / ``linear``).
- loss: an ``nn.Module`` whose ``forward(outputs, batch, teacher_outputs=None)`` returns a dict with a
  ``"loss"`` tensor and named float/tensor parts for logging; ``setup(context)`` before training.
- target: ``prepare(teacher, dataset, context)``; ``__call__(batch) -> Tensor`` teacher targets.
- evaluator: ``evaluate(model, data, context) -> dict[str, float]``.
- reporter: ``write(run) -> None`` writes human-readable output into the run directory.
"""
from __future__ import annotations

from typing import Any, Callable

import pluggy

PROJECT = "corecompress"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., None]


# --- registration (fired once, when the plugins are loaded) -------------------------------------

@hookspec
def register_models(register: Register) -> None:
    """Register model adapters (build a model, expose its prunable groups, own architecture fix-ups)."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets (training data and named evaluation sets)."""


@hookspec
def register_importances(register: Register) -> None:
    """Register importance criteria that score the units of prunable groups (higher = more important)."""


@hookspec
def register_appliers(register: Register) -> None:
    """Register plan appliers: soft masking and physical removal of what a pruning plan drops."""


@hookspec
def register_schedules(register: Register) -> None:
    """Register schedules: pure functions of the step for learning rate, sparsity and loss weights."""


@hookspec
def register_losses(register: Register) -> None:
    """Register training objectives and distillation losses (margin heads, AdaDistill, KD, ...)."""


@hookspec
def register_targets(register: Register) -> None:
    """Register distillation targets: what the teacher provides to a loss (live or cached embeddings)."""


@hookspec
def register_evaluators(register: Register) -> None:
    """Register evaluators that turn a model and data into named metrics."""


@hookspec
def register_reporters(register: Register) -> None:
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
