"""What a recipe's components need, checked before anything runs.

Each component declares its needs once, at registration (:mod:`corecompress.plugin.registry`): a
teacher, calibration data, gradients, or an artifact another component produces. A recipe that
does not supply one is a one-line :class:`~corecompress.errors.RecipeError` at validation, naming what
would supply it — never an error after training, never a run directory left behind.
"""
from __future__ import annotations

from typing import Any

from corecompress.errors import RecipeError
from corecompress.plugin.registry import Registry, needed_artifacts


def check_recipe_needs(recipe: Any, registry: Registry) -> None:
    """Raise RecipeError for the first component whose needs the recipe does not meet."""
    produced: set[str] = set()  # artifacts of the phases that ran so far, in run order
    for path, kind, choice, phase_output in _in_run_order(recipe):
        component = registry.get(kind, choice.name, path)
        needs = component.needs_for(choice.options)
        if "teacher" in needs and recipe.teacher is None:
            raise RecipeError(path, f"'{choice.name}' needs a teacher; add a 'teacher:' section "
                                    "(teacher: {} = the model as it is before pruning)")
        if "data" in needs and recipe.prune is not None and recipe.prune.calibration_batches < 1:
            raise RecipeError("prune.calibration_batches", f"'{choice.name}' needs calibration data; set at least 1")
        for artifact in needed_artifacts(needs):
            if artifact not in produced:
                makers = registry.producers_of(artifact)
                made_by = f"produced by {', '.join(makers)}" if makers else "no installed component produces it"
                raise RecipeError(path, f"'{choice.name}' needs the artifact '{artifact}', which no earlier phase "
                                        f"of this recipe produces ({made_by})")
        if phase_output:
            produced |= component.produces


def _in_run_order(recipe: Any) -> list[tuple[str, str, Any, bool]]:
    """(key path, kind, choice, produces artifacts for later stages) of every component, in the order the
    runner uses them: train, evaluation, scoring, retraining, evaluation."""
    chosen: list[tuple[str, str, Any, bool]] = []
    evaluators = [(f"evaluate[{i}]", "evaluator", c, False) for i, c in enumerate(recipe.evaluate)]
    if recipe.train is not None:
        chosen.append(("train.objective", "loss", recipe.train.objective, True))
    if recipe.prune is not None and recipe.prune.plan is None:
        chosen.append(("prune.importance", "importance", recipe.prune.importance, False))
    if recipe.retrain is not None:
        chosen.append(("retrain.objective", "loss", recipe.retrain.objective, True))
    return chosen + evaluators  # evaluators run after each phase: everything produced counts
