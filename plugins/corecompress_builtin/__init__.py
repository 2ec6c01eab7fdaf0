"""corecompress_builtin: the built-in generic components (registered through the entry-point group).

Magnitude and random importances, mask/physical appliers, learning-rate schedules, the tiny stand-in
models (``tiny_vit``, ``tiny_cnn``; the test kit builds them through the registry) and synthetic
prototypes, cross-entropy, accuracy/efficiency evaluators, the Markdown reporter — and the hook that
keeps soft masks at zero after every optimizer step.
"""
from __future__ import annotations

from typing import Any

from corecompress import hookimpl

from corecompress_builtin import appliers, data, evaluators, importances, losses, models, reporters, schedules


@hookimpl
def register_models(register: Any) -> None:
    models.register(register)


@hookimpl
def register_datasets(register: Any) -> None:
    data.register(register)


@hookimpl
def register_importances(register: Any) -> None:
    importances.register(register)


@hookimpl
def register_appliers(register: Any) -> None:
    appliers.register(register)


@hookimpl
def register_schedules(register: Any) -> None:
    schedules.register(register)


@hookimpl
def register_losses(register: Any) -> None:
    losses.register(register)


@hookimpl
def register_evaluators(register: Any) -> None:
    evaluators.register(register)


@hookimpl
def register_reporters(register: Any) -> None:
    reporters.register(register)


@hookimpl
def after_optimizer_step(run: Any, step: int, model: Any) -> None:
    appliers.reapply_masks(run, model)
