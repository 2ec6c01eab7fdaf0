"""What the engine expects of each kind of component, as :class:`typing.Protocol` classes.

Every attribute or method the engine reads from a component is listed here; anything else a
component has is its own business. Optional members are named in the docstrings and read with
``getattr``. What a component *needs* (a teacher, calibration data, gradients, an artifact) and what
it *produces* for others is not an attribute: it is declared once, when the component is registered
(``register(..., needs=..., produces=...)``, see :mod:`corecompress.plugin.registry`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from corecompress.pruning.groups import PrunableGroup

T_co = TypeVar("T_co", covariant=True)

#: What a recipe can supply to a component that declares it needs it.
RESOURCES: Mapping[str, str] = {
    "teacher": "a teacher model (the recipe's 'teacher:' section)",
    "data": "calibration batches of the training data (importances; prune.calibration_batches)",
    "grad": "gradients of the training objective on the calibration batches (importances)",
}


@runtime_checkable
class ModelAdapter(Protocol):
    """Builds a model and describes its prunable structure as data.

    Optional: ``embedding_size`` (int), ``load_weights(model, path)``."""

    input_size: tuple[int, int, int]

    def build(self) -> nn.Module: ...

    def prunable_groups(self, model: nn.Module, targets: tuple[str, ...]) -> list[PrunableGroup]: ...


@runtime_checkable
class Dataset(Protocol):
    """Training data of dict samples (``image``, ``label``, optional ``attributes``) and named evaluation sets.

    Optional on the torch dataset ``train()`` returns (and on evaluation image sets), read by
    :mod:`corecompress.engine.data_loaders`: ``decode_workers`` (int, DataLoader workers it wants under
    ``num_workers: auto``; absent or 0 = samples in memory) and ``batch(indices) -> dict`` (the collated
    samples, bit for bit, read at once); on a decoding training set, ``uint8_view() -> (view, normalize) |
    None`` (read by the training loop only: ``view`` yields uint8 images, ``normalize`` of their batch on the
    device is bit for bit the float batch; docs/data_loading.md)."""

    num_classes: int

    def train(self) -> torch.utils.data.Dataset: ...

    def evaluation(self) -> dict[str, Any]: ...


@runtime_checkable
class Importance(Protocol):
    """Scores the units of prunable groups: ``{group name: (group.size,) tensor}`` of finite numbers,
    higher = keep, one entry per group — unless the importance was registered with
    ``declines_groups=True``: then groups it leaves out stay unpruned, and its optional ``declined``
    attribute (``{group name: reason}``) says why in the log and the report. Every scoring is checked
    (:func:`corecompress.engine.preflight.check_scores`).

    Optional attribute ``comparable_across_groups`` (default False): True when one score means the
    same in every group, so ``prune.budget`` with ``scope: global`` may rank all blocks together;
    otherwise a budget is met with one uniform fraction per group (:mod:`corecompress.pruning.budget`).
    """

    def score(self, model: nn.Module, groups: list[PrunableGroup], context: Any) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class Applier(Protocol):
    """Applies a pruning plan (soft masks or physical removal); returns the model to train from now on."""

    def apply(self, model: nn.Module, groups: list[PrunableGroup], plan: Any, context: Any) -> nn.Module: ...


@runtime_checkable
class Schedule(Protocol):
    """A pure function of the step. As a learning-rate or loss-weight schedule: the multiplier at
    optimizer step ``step`` (0-based) of ``total_steps``. As a sparsity ramp (``prune.ramp``; Zhu & Gupta
    2018, "To prune, or not to prune"): called as ``ramp(k, rounds)`` for gradual-pruning round
    k = 1..rounds, it returns the fraction of the final sparsity reached after round k, and round k
    prunes to ``prune.sparsity · ramp(k, rounds)``; the values must lie in [0, 1], never decrease (a
    pruned unit stays pruned) and reach 1 at the last round, else the recipe is refused. Built in:
    ``sparsity_cubic`` 1 − (1 − k/R)³ and ``sparsity_linear`` k/R (``ramp: cubic`` / ``linear``)."""

    def __call__(self, step: int, total_steps: int) -> float: ...


@runtime_checkable
class Loss(Protocol):
    """A training objective (an ``nn.Module``): ``forward(outputs, batch, teacher_outputs=None)`` returns a
    dict with a scalar ``"loss"`` tensor and named parts to log.

    Optional: ``setup(context)`` before training; ``on_train_end(context)`` when a phase ends (every rank);
    ``artifacts() -> {name: Tensor | nn.Module}`` on the loss or any module inside it, for every name the
    component declared in ``produces`` (the engine stores them and hands them to the components that
    need them)."""

    def __call__(self, outputs: Any, batch: dict[str, Any], teacher_outputs: Any = None) -> dict[str, Any]: ...


@runtime_checkable
class Target(Protocol):
    """What the teacher provides to a loss: ``prepare`` once, then teacher outputs for a batch."""

    def prepare(self, teacher: nn.Module, dataset: Any, context: Any) -> None: ...

    def __call__(self, batch: dict[str, Any]) -> Any: ...


@runtime_checkable
class Evaluator(Protocol):
    """Turns a model and the dataset component into named metrics."""

    def evaluate(self, model: nn.Module, data: Any, context: Any) -> dict[str, float]: ...


@runtime_checkable
class Reporter(Protocol):
    """Writes human-readable results of a run into its directory."""

    def write(self, run: Any) -> None: ...


#: The protocol of each component kind.
PROTOCOLS: Mapping[str, type] = {
    "model": ModelAdapter, "dataset": Dataset, "importance": Importance, "applier": Applier,
    "schedule": Schedule, "loss": Loss, "target": Target, "evaluator": Evaluator, "reporter": Reporter,
}

#: ``needs`` as registered: names, or a function of the component's parsed options giving them.
Needs = Iterable[str] | Callable[[Any], Iterable[str]]


class Register(Protocol[T_co]):
    """The callback a ``register_<kind>s`` hook receives: ``register(name, factory, options, ...)``.

    ``factory(options)`` (or ``factory()`` when ``options`` is None) returns the component; ``options`` is
    a dataclass (the recipe schema); ``needs``: names from :data:`RESOURCES` or artifacts other
    components produce (or a function of the parsed options returning them); ``produces``: the
    artifacts the component hands to others; ``declines_groups`` (importances only): it may leave groups
    unscored."""

    def __call__(self, name: str, factory: Callable[..., T_co], options: type | None = None, *,
                 description: str = "", needs: Needs = (), produces: Iterable[str] = (),
                 declines_groups: bool = False) -> None: ...
