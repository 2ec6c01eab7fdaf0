"""Schedules: pure functions of (step, total_steps).

Learning-rate and loss-weight schedules return a multiplier at optimizer step ``step`` of ``total_steps``.
Sparsity ramps (``prune.ramp``) are called as ``ramp(k, rounds)`` and return the fraction of the final
sparsity that round k of gradual pruning reaches (Zhu & Gupta, "To prune, or not to prune", 2018); see
the schedule protocol in :mod:`corecompress.plugin.hookspecs`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ConstantOptions:
    value: float = 1.0


@dataclass
class StepOptions:
    milestones: list[float] = field(default_factory=lambda: [0.3, 0.6, 0.9],
                                    metadata={"help": "fractions of training (< 1) or absolute steps (≥ 1)"})
    gamma: float = 0.1
    warmup_steps: int = 0


@dataclass
class CosineOptions:
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up from 0"})
    warmup_fraction: float = field(default=0.05, metadata={"help": "used when warmup_steps is 0"})
    min_factor: float = field(default=0.0, metadata={"help": "final multiplier"})


@dataclass
class LinearOptions:
    start: float = 1.0
    end: float = 0.0
    warmup_steps: int = 0


def _warmup(step: int, warmup: int) -> float:
    return (step + 1) / warmup if warmup and step < warmup else 1.0


class Constant:
    def __init__(self, o: ConstantOptions) -> None:
        self.o = o

    def __call__(self, step: int, total_steps: int) -> float:
        return self.o.value


class StepDecay:
    """Multiply by ``gamma`` at each milestone (the AdaDistill paper's SGD schedule)."""

    def __init__(self, o: StepOptions) -> None:
        self.o = o

    def __call__(self, step: int, total_steps: int) -> float:
        marks = [m * total_steps if m < 1 else m for m in self.o.milestones]
        return _warmup(step, self.o.warmup_steps) * self.o.gamma ** sum(step >= m for m in marks)


class Cosine:
    """Linear warm-up, then half a cosine down to ``min_factor``."""

    def __init__(self, o: CosineOptions) -> None:
        self.o = o

    def __call__(self, step: int, total_steps: int) -> float:
        warm = self.o.warmup_steps or int(self.o.warmup_fraction * total_steps)
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return self.o.min_factor + (1 - self.o.min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Linear:
    def __init__(self, o: LinearOptions) -> None:
        self.o = o

    def __call__(self, step: int, total_steps: int) -> float:
        progress = step / max(1, total_steps - 1)
        return _warmup(step, self.o.warmup_steps) * (self.o.start + (self.o.end - self.o.start) * progress)


def _progress(step: int, total_steps: int) -> float:
    """``step / total_steps``, clamped to [0, 1] (the value itself for 0 ≤ step ≤ total_steps ≥ 1)."""
    return min(1.0, max(0.0, step / max(1, total_steps)))


class CubicRamp:
    """Zhu & Gupta (2018): round k of R reaches 1 − (1 − k/R)³ of the final sparsity — fast early, when
    there are redundant units to spare, then slower as the model gets small."""

    def __call__(self, step: int, total_steps: int) -> float:
        return 1.0 - (1.0 - _progress(step, total_steps)) ** 3


class LinearRamp:
    """Round k of R reaches k/R of the final sparsity: an equal share of units removed by every round."""

    def __call__(self, step: int, total_steps: int) -> float:
        return _progress(step, total_steps)


def register(register: Any) -> None:
    register("constant", Constant, ConstantOptions, description="a constant multiplier")
    register("step", StepDecay, StepOptions, description="×gamma at each milestone")
    register("cosine", Cosine, CosineOptions, description="warm-up then cosine decay")
    register("linear", Linear, LinearOptions, description="linear from start to end")
    # Sparsity ramps; recipes may say prune.ramp: cubic / linear (corecompress.pruning.gradual.RAMP_SHORTHANDS).
    register("sparsity_cubic", CubicRamp,
             description="sparsity ramp 1 − (1 − k/R)³ of the final sparsity (Zhu & Gupta 2018; prune.ramp: cubic)")
    register("sparsity_linear", LinearRamp,
             description="sparsity ramp k/R of the final sparsity (prune.ramp: linear)")
